// Device messages between hosts through a transport's message port: framing, matching order,
// and what a receive that disagrees with its send fails with.
#include "core/direct_messages.h"

#include <set>

#include "base/error.h"
#include "core/communicator.h"
#include "core/p2p.h"
#include "transport/frame.h"
#include "transport/transport_set.h"

namespace plexus {

namespace {
// A port tag: the user's tag (16 bits), the channel (1: collectives), the message's number in its
// (direction, peer, tag or channel) (kSequenceBits, wrapping), the part (0 header, 1 payload).
constexpr int kSequenceBits = MessagePort::kTagBits - 16 - 1 - 1;
}

// One send or receive: its two parts (header, payload) complete on the port's thread in any
// order; the last one completes the work.
struct DirectMessages::Message {
  std::shared_ptr<Work> work;
  bool is_send = false;
  int peer = 0;
  size_t bytes = 0;
  DType dtype = DType::kUInt8;
  int tag = 0;
  bool collective = false;
  Signature sig;        // collectives: the call's
  uint64_t op_seq = 0;  // collectives: the call's position in the communicator's sequence
  double timeout_s = 0;
  uint64_t comm_id = 0;
  std::string self_name, peer_name;
  FrameHeader header{};  // sent, or received
  std::mutex mu;
  int parts_left = 0;
  std::exception_ptr header_error, payload_error;

  void finish_part(bool is_header, std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mu);
      (is_header ? header_error : payload_error) = std::move(error);
      if (--parts_left > 0) return;
    }
    std::exception_ptr why = header_error ? in_context(header_error) : mismatch();
    if (!why && payload_error) why = in_context(payload_error);
    if (why) {
      work->set_failed(why);
      return;
    }
    if (!is_send) work->set_source(peer);
    work->set_done();
  }
  // The port's error, saying which message it was.
  std::exception_ptr in_context(std::exception_ptr error) const {
    const std::string what =
        (collective ? sig.describe() + " #" + std::to_string(op_seq) + ": " : std::string()) +
        (is_send ? "send of " : "recv of ") + std::to_string(bytes) + " bytes" +
        (collective ? std::string() : " of " + std::string(dtype_name(dtype))) + (is_send ? " to " : " from ") +
        peer_name + (collective ? std::string() : " with tag " + std::to_string(tag));
    const char* path = collective ? " (a device collective through ucx)" : " (a device message through ucx)";
    try {
      std::rethrow_exception(error);
    } catch (const InvalidArgument&) {
      return error;  // a mismatch says it all
    } catch (const Timeout&) {
      return std::make_exception_ptr(
          Timeout(what + " timed out after " + std::to_string(static_cast<int>(timeout_s)) + " s" + path));
    } catch (const PeerError& e) {
      return std::make_exception_ptr(PeerError(e.peer, what + ": " + e.what()));
    } catch (const std::exception& e) {
      return std::make_exception_ptr(Error(what + ": " + e.what()));
    }
  }
  // For a receive whose header came: the send it met, when it is not this receive's.
  std::exception_ptr mismatch() const {
    if (is_send) return nullptr;
    const FrameHeader& h = header;
    const FrameType type = collective ? FrameType::kData : FrameType::kP2P;
    if (h.magic != kFrameMagic || h.version != kWireVersion || h.comm_id != comm_id ||
        h.type != static_cast<uint8_t>(type))
      return std::make_exception_ptr(PeerError(peer, peer_name + " sent a device message that is not a plexus frame"));
    if (collective) {
      const Signature theirs = h.signature();
      if (h.seq != op_seq || theirs != sig)
        return std::make_exception_ptr(Error(collective_mismatch(self_name, sig, op_seq, peer_name, theirs, h.seq)));
      if (h.payload_bytes == bytes) return nullptr;
      return std::make_exception_ptr(Error(sig.describe() + " #" + std::to_string(op_seq) + ": " + peer_name +
                                           " sent " + std::to_string(h.payload_bytes) + " bytes where " +
                                           std::to_string(bytes) + " were expected"));
    }
    if (h.payload_bytes == bytes && static_cast<DType>(h.dtype) == dtype) return nullptr;
    return recv_mismatch(bytes, dtype, tag, peer_name, h.payload_bytes, static_cast<DType>(h.dtype));
  }
};

bool DirectMessages::reaches(int peer, MemoryKind memory) const {
  if (peer < 0 || peer >= comm_.size() || peer == comm_.rank()) return false;
  MessagePort* port = transports_.port_to(peer);
  return port && port->reaches(peer, memory);
}

std::shared_ptr<DirectMessages::Message> DirectMessages::start(bool is_send, int peer, size_t bytes, DType dtype,
                                                               const Purpose& purpose, MemoryKind memory,
                                                               uint64_t* port_tag) {
  comm_.check_not_forked();
  const bool collective = purpose.sig != nullptr;
  const char* what = is_send ? "send" : "recv";
  if (!reaches(peer, memory))
    throw InvalidArgument(std::string(what) + " on " + comm_.name_of(comm_.rank()) + ": no message port reaches " +
                          (peer >= 0 && peer < comm_.size() ? comm_.name_of(peer) : "group rank " + std::to_string(peer)));
  if (!collective && (purpose.tag < 0 || purpose.tag >= kTagLimit))
    throw InvalidArgument(std::string(what) + ": device messages between hosts take tags from 0 to " +
                          std::to_string(kTagLimit - 1) + ", not " + std::to_string(purpose.tag));
  uint64_t n;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.empty()) throw Error("device messages are unusable after: " + failure_);
    n = sent_[{is_send, peer, purpose.tag}]++;
  }
  const uint64_t field = collective ? 1 : static_cast<uint64_t>(purpose.tag) << 1;  // the tag, then the channel
  *port_tag = (field << (kSequenceBits + 1)) | ((n & ((uint64_t{1} << kSequenceBits) - 1)) << 1);
  Signature sig;
  if (collective) {
    sig = *purpose.sig;
  } else {
    sig.kind = CollKind::kCount;
    sig.dtype = dtype;
    sig.root = purpose.tag;
    sig.count = bytes / dtype_size(dtype);
  }
  auto m = std::make_shared<Message>();
  m->work = std::make_shared<Work>(sig);
  m->is_send = is_send;
  m->peer = peer;
  m->bytes = bytes;
  m->dtype = dtype;
  m->tag = purpose.tag;
  m->collective = collective;
  m->sig = sig;
  m->op_seq = purpose.seq;
  m->timeout_s = comm_.timeout_s();
  m->comm_id = comm_.id();
  m->self_name = comm_.name_of(comm_.rank());
  m->peer_name = comm_.name_of(peer);
  m->parts_left = 2;
  if (is_send) {
    m->header = FrameHeader::data(comm_.id(), collective ? purpose.seq : n, sig, bytes);
    m->header.type = static_cast<uint8_t>(collective ? FrameType::kData : FrameType::kP2P);
  }
  return m;
}

std::shared_ptr<Work> DirectMessages::send(int peer, const void* buf, size_t bytes, DType dtype, int tag,
                                           MemoryKind memory) {
  return post(true, peer, const_cast<void*>(buf), bytes, dtype, Purpose{tag}, memory);
}

std::shared_ptr<Work> DirectMessages::recv(int peer, void* buf, size_t bytes, DType dtype, int tag,
                                           MemoryKind memory) {
  return post(false, peer, buf, bytes, dtype, Purpose{tag}, memory);
}

std::shared_ptr<Work> DirectMessages::collective_send(int peer, const void* buf, size_t bytes, const Signature& sig,
                                                      uint64_t seq, const Deadline& deadline, MemoryKind memory) {
  return post(true, peer, const_cast<void*>(buf), bytes, DType::kUInt8, Purpose{kCollectiveTag, &sig, seq, &deadline},
              memory);
}

std::shared_ptr<Work> DirectMessages::collective_recv(int peer, void* buf, size_t bytes, const Signature& sig,
                                                      uint64_t seq, const Deadline& deadline, MemoryKind memory) {
  return post(false, peer, buf, bytes, DType::kUInt8, Purpose{kCollectiveTag, &sig, seq, &deadline}, memory);
}

std::shared_ptr<Work> DirectMessages::post(bool is_send, int peer, void* buf, size_t bytes, DType dtype,
                                           const Purpose& purpose, MemoryKind memory) {
  uint64_t t;
  auto m = start(is_send, peer, bytes, dtype, purpose, memory, &t);
  MessagePort& port = *transports_.port_to(peer);
  const Deadline deadline = purpose.deadline ? *purpose.deadline : Deadline::after_seconds(comm_.timeout_s());
  auto part = [&](uint64_t part_tag, void* at, size_t n, MemoryKind kind, bool is_header) {
    // The message keeps itself (and its header's memory) alive through its parts' callbacks.
    auto done = [m, is_header](std::exception_ptr e, size_t) { m->finish_part(is_header, std::move(e)); };
    if (is_send) {
      port.send(peer, part_tag, at, n, kind, deadline, std::move(done));
    } else {
      port.recv(peer, part_tag, at, n, kind, deadline, std::move(done));
    }
  };
  part(t, &m->header, sizeof(FrameHeader), MemoryKind::kHost, true);
  // Posted when empty too, so that a send and a receive of different sizes meet (and the receive
  // names both); UCX is not told of device memory it will not touch.
  part(t | 1, buf, bytes, bytes ? memory : MemoryKind::kHost, false);
  std::string aborted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborted = failure_;
  }
  if (!aborted.empty()) port.cancel_all(aborted);  // abort() ran meanwhile and may have missed it
  return m->work;
}

void DirectMessages::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.empty()) return;
    failure_ = why;
  }
  std::set<MessagePort*> ports;
  for (int p = 0; p < comm_.size(); ++p)
    if (p != comm_.rank())
      if (MessagePort* port = transports_.port_to(p)) ports.insert(port);
  for (MessagePort* port : ports) port->cancel_all(why);
}

}  // namespace plexus
