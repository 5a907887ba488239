// What a collective call is: every frame on the wire carries it, so that ranks that disagree
// about the call (kind, dtype, count, op, root, position in the sequence) fail loudly.
#pragma once

#include <cstdint>
#include <string>

#include "base/types.h"

namespace plexus {

struct Signature {
  CollKind kind = CollKind::kBarrier;
  DType dtype = DType::kUInt8;
  RedOp op = RedOp::kNone;
  int32_t root = -1;
  uint64_t count = 0;  // elements per rank as the caller counts them (see the Python API)

  bool operator==(const Signature& o) const {
    return kind == o.kind && dtype == o.dtype && op == o.op && root == o.root && count == o.count;
  }
  bool operator!=(const Signature& o) const { return !(*this == o); }
  // e.g. "all_reduce(count=10, dtype=float32, op=sum)"
  std::string describe() const;
};

// What ranks that disagree about a call are told: "collective mismatch: rank 1 called A as op #3
// but rank 0 called B as op #3".
std::string collective_mismatch(const std::string& me, const Signature& mine, uint64_t my_seq, const std::string& them,
                                const Signature& theirs, uint64_t their_seq);

}  // namespace plexus
