// Messages of device arrays between hosts (send/recv), straight from the sender's memory into
// the receiver's through the message port of the pair's transport (UCX, transport/message_port.h):
// no copy through pinned host memory, and GPUDirect RDMA where the system has it. Each message
// is two port messages: its frame header (host memory, so that a receive that disagrees with its
// send names both) and its payload (the caller's memory). They match in order per (peer, tag), as
// the point-to-point engine's do; both ends of a message must take this path (the Python layer
// decides alike on both: device arrays, a pair whose ports move device memory, a small tag).
// Collectives of device arrays between hosts (algorithms/port_flat) send their blocks as messages
// of their own channel, whose headers carry the collective's signature and position instead.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "base/deadline.h"
#include "base/types.h"
#include "core/work.h"
#include "transport/message_port.h"

namespace plexus {

class Communicator;
class TransportSet;

class DirectMessages {
 public:
  static constexpr int kTagLimit = 1 << 16;  // tags from 0 below this

  DirectMessages(Communicator& comm, TransportSet& transports) : comm_(comm), transports_(transports) {}
  ~DirectMessages() { abort("the communicator was destroyed"); }

  // Whether messages in `memory` reach `peer` this way (both ranks of the pair agree).
  bool reaches(int peer, MemoryKind memory) const;
  // Complete once the port is done with the memory (a send: the receiver has it, or the
  // transport took all of it).
  std::shared_ptr<Work> send(int peer, const void* buf, size_t bytes, DType dtype, int tag, MemoryKind memory);
  std::shared_ptr<Work> recv(int peer, void* buf, size_t bytes, DType dtype, int tag, MemoryKind memory);
  // A block of collective op #`seq` (`sig`), on the collectives' channel, failed past the op's
  // `deadline`: a receive fails when the sender was in another call (naming both) or sent
  // another size.
  std::shared_ptr<Work> collective_send(int peer, const void* buf, size_t bytes, const Signature& sig, uint64_t seq,
                                        const Deadline& deadline, MemoryKind memory);
  std::shared_ptr<Work> collective_recv(int peer, void* buf, size_t bytes, const Signature& sig, uint64_t seq,
                                        const Deadline& deadline, MemoryKind memory);
  // Fails every message in flight and refuses new ones.
  void abort(const std::string& why);

 private:
  struct Message;
  // What a message is for: a user's send/recv (tag), or a block of a collective (sig, seq; its
  // tag is kCollectiveTag, which numbers the collectives' messages apart from every user tag).
  struct Purpose {
    int tag = 0;
    const Signature* sig = nullptr;
    uint64_t seq = 0;
    const Deadline* deadline = nullptr;  // else the group's timeout from now
  };
  static constexpr int kCollectiveTag = -1;
  std::shared_ptr<Work> post(bool is_send, int peer, void* buf, size_t bytes, DType dtype, const Purpose& purpose,
                             MemoryKind memory);
  std::shared_ptr<Message> start(bool is_send, int peer, size_t bytes, DType dtype, const Purpose& purpose,
                                 MemoryKind memory, uint64_t* port_tag);

  Communicator& comm_;
  TransportSet& transports_;
  std::mutex mu_;
  std::map<std::tuple<bool, int, int>, uint64_t> sent_;  // messages so far by (is_send, peer, tag or channel)
  std::string failure_;
};

}  // namespace plexus
