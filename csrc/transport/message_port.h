// Whole messages from the sender's memory straight into the receiver's, matched by tag, for a
// transport that can move device memory itself: UCX does (CUDA memory through its cuda_copy
// transport, GPUDirect RDMA where the system has it). Device arrays between hosts go through it
// (core/direct_messages.h) instead of a copy through pinned host memory. The byte streams of
// transport/connection.h stay what collectives and host messages use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>

#include "base/deadline.h"

namespace plexus {

enum class MemoryKind { kHost, kCuda };

class MessagePort {
 public:
  virtual ~MessagePort() = default;

  // Bits of the tags the port's users choose (it adds the channel and the sender).
  static constexpr int kTagBits = 40;
  // Called once, on the transport's thread or the caller's: nullptr and the bytes that came (a
  // send: its size), or why the message failed.
  using Done = std::function<void(std::exception_ptr error, size_t bytes)>;

  // Whether messages in `memory` reach `peer` through the port: both ranks of the pair agree.
  virtual bool reaches(int peer, MemoryKind memory) const = 0;
  // The memory stays the message's until `done`. A message still in flight at `deadline` fails
  // with Timeout; one whose peer died, with PeerError. A send that failed so may still be read
  // by the transport until its peer takes it or the communicator is destroyed (UCX cannot take
  // a send back), and `done` is kept until then.
  virtual void send(int peer, uint64_t tag, const void* buf, size_t bytes, MemoryKind memory, Deadline deadline,
                    Done done) = 0;
  // A message longer than `bytes` fails; a shorter one completes with its size.
  virtual void recv(int peer, uint64_t tag, void* buf, size_t bytes, MemoryKind memory, Deadline deadline,
                    Done done) = 0;
  // Fails every message in flight with Error(why); returns once no receive of them can write
  // memory any more, or after a while (a send UCX cannot take back goes on, as above).
  virtual void cancel_all(const std::string& why) = 0;
};

}  // namespace plexus
