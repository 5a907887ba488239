// Memory that the ranks of one host share, as the direct intra-host algorithms see it: per local
// rank, staging buffers to publish data in, counters saying how far it got through the rounds,
// and stamps saying which op a buffer holds. A transport that maps such memory (shm) hands it
// out through Transport::host_memory(); the algorithms never see how it is mapped.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/signature.h"

namespace plexus {

constexpr size_t kCacheLine = 64;

// Which op a staging buffer currently holds, so that readers can check they agree.
struct alignas(kCacheLine) OpStamp {
  std::atomic<uint64_t> seq;
  std::atomic<uint64_t> round;
  Signature sig;
};

// Progress of a local rank through the rounds (monotonic over the communicator's life): rounds
// whose input it published, whose result it published, and that it finished reading.
enum class RoundCounter { kArrived, kReduced, kDone };

class HostMemory {
 public:
  virtual ~HostMemory() = default;

  // Local ranks are numbered 0..local_size()-1 in the order of their communicator ranks.
  virtual int local_size() const = 0;
  virtual int local_index() const = 0;
  // Local index of communicator rank `rank`, or -1 if it is on another host.
  virtual int local_index_of(int rank) const = 0;
  // How messages call local rank `local` (e.g. "rank 5").
  virtual const std::string& name_of(int local) const = 0;

  virtual std::atomic<uint64_t>& counter(int local, RoundCounter c) const = 0;
  // Two of each (parity 0 and 1): a rank fills one while slower ranks still read the other.
  virtual OpStamp& stamp(int local, int parity) const = 0;
  virtual char* staging(int local, int parity) const = 0;
  virtual size_t staging_bytes() const = 0;

  // Throws PeerError if local rank `local` has failed or its process is gone.
  virtual void check_peer(int local) const = 0;

  // Cross-memory attach: whether every local rank can read every other's memory with
  // process_vm_readv (the same answer on every local rank), and whom to read from.
  virtual bool cma() const { return false; }
  virtual int pid_of(int local) const { (void)local; return -1; }
};

}  // namespace plexus
