// What core hands an algorithm while its op runs: the op's signature, sequence number and
// deadline, who the ranks are, and the communicator's services an algorithm may use (abort
// checks, the host's shared memory, the cross-host all-reduce). Algorithms see the
// communicator only through this (and core/exchange.h), never its connections.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "base/signature.h"
#include "base/types.h"
#include "transport/message_port.h"

namespace plexus {

class Communicator;
class HostMemory;  // transport/host_memory.h

// One block a collective sends to or receives from a peer through its message port.
struct PortBlock {
  int peer;
  void* buf;
  size_t bytes;
};

class OpContext {
 public:
  OpContext(Communicator& comm, const Signature& sig, uint64_t seq, Deadline deadline)
      : sig(sig), seq(seq), deadline(deadline), comm_(comm) {}

  const Signature sig;
  const uint64_t seq;  // position of this op in the communicator's sequence, from 1
  const Deadline deadline;

  int rank() const;
  int size() const;
  std::string describe() const;  // e.g. "all_reduce(count=10, dtype=float32, op=sum) #3"
  // How messages call group rank r: "rank G" with G its global rank.
  std::string name_of(int r) const;
  double timeout_s() const;
  // Throws if the communicator was aborted.
  void check_abort() const;
  // Memory shared with the ranks of this host, or nullptr when there is none.
  HostMemory* host_memory() const;
  // All-reduces `count` elements in place across hosts, among the ranks with this rank's
  // position on their host (the middle of the hierarchical all-reduce).
  void all_reduce_across_hosts(void* buf, size_t count, DType dtype, RedOp op) const;
  // For collectives of device arrays between hosts (algorithms/port_flat): one round of blocks
  // through the peers' message ports: every receive and send posted at once (each block a message
  // carrying this op's signature and position, so a peer in another call is named), then waited
  // for. Rethrows the first failure once none is in flight.
  void port_exchange(const std::vector<PortBlock>& recvs, const std::vector<PortBlock>& sends,
                     MemoryKind memory) const;

  // For core (the exchange engine): the communicator itself.
  Communicator& communicator() const { return comm_; }

 private:
  Communicator& comm_;
};

}  // namespace plexus
