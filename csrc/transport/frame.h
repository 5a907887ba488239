// The fixed header in front of every message between peers.
#pragma once

#include <cstdint>

#include "base/signature.h"

namespace plexus {

constexpr uint32_t kFrameMagic = 0x504C5846;  // "PLXF"
constexpr uint16_t kWireVersion = 1;

enum class FrameType : uint8_t {
  kData = 1,   // payload of a collective step
  kError = 2,  // the sender failed; the payload is its error message (UTF-8)
  kP2P = 3,    // a point-to-point message; `root` carries its tag
};

#pragma pack(push, 1)
struct FrameHeader {
  uint32_t magic;
  uint16_t version;
  uint8_t type;
  uint8_t kind;
  uint8_t dtype;
  uint8_t op;
  uint16_t reserved;
  int32_t root;
  uint32_t reserved2;
  uint64_t comm_id;
  uint64_t seq;
  uint64_t count;
  uint64_t payload_bytes;

  static FrameHeader data(uint64_t comm_id, uint64_t seq, const Signature& sig, uint64_t bytes) {
    FrameHeader h{};
    h.magic = kFrameMagic;
    h.version = kWireVersion;
    h.type = static_cast<uint8_t>(FrameType::kData);
    h.kind = static_cast<uint8_t>(sig.kind);
    h.dtype = static_cast<uint8_t>(sig.dtype);
    h.op = static_cast<uint8_t>(sig.op);
    h.root = sig.root;
    h.comm_id = comm_id;
    h.seq = seq;
    h.count = sig.count;
    h.payload_bytes = bytes;
    return h;
  }
  Signature signature() const {
    Signature s;
    s.kind = static_cast<CollKind>(kind);
    s.dtype = static_cast<DType>(dtype);
    s.op = static_cast<RedOp>(op);
    s.root = root;
    s.count = count;
    return s;
  }
};
#pragma pack(pop)
static_assert(sizeof(FrameHeader) == 52, "frame header layout");

}  // namespace plexus
