// Shared memory between the ranks of one host. Each local rank owns one POSIX shared-memory
// segment that every other local rank maps:
//
//   [ header: identity, abort flag, round counters, op stamps ]
//   [ one incoming byte ring per local peer and channel (ShmConnection streams); channel 0
//     carries collectives, channel 1 point-to-point messages ]
//   [ staging area: 2 buffers (alternating rounds) for the direct intra-host algorithms ]
//
// Segments are created owner-only (0600) and unlinked as soon as every local rank has mapped
// them, so nothing is left in /dev/shm after a run, even one that crashes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "bootstrap/store.h"
#include "transport/host_memory.h"

namespace plexus {

struct alignas(kCacheLine) SegmentHeader {
  uint64_t magic;
  uint64_t comm_id;
  int32_t rank;
  int32_t pid;
  uint64_t pid_ns;  // inode of the owner's pid namespace: pids are comparable only within one
  alignas(kCacheLine) std::atomic<uint64_t> aborted;
  char abort_message[2048];
  // The owner's RoundCounters.
  alignas(kCacheLine) std::atomic<uint64_t> arrived;
  alignas(kCacheLine) std::atomic<uint64_t> reduced;
  alignas(kCacheLine) std::atomic<uint64_t> done;
  OpStamp stamp[2];
  uint64_t self_addr;             // where the owner mapped this segment (what a CMA probe reads)
  std::atomic<uint32_t> cma_ok;   // the owner read every peer's segment through CMA: 1, else 2
};

// A single-producer single-consumer byte ring; lives in the reader's segment.
struct alignas(kCacheLine) RingHeader {
  std::atomic<uint64_t> head;  // bytes written, by the writer
  alignas(kCacheLine) std::atomic<uint64_t> tail;  // bytes read, by the reader
};

constexpr int kShmChannels = 2;

struct ShmLayout {
  size_t ring_bytes = 0;     // capacity of each incoming ring
  size_t staging_bytes = 0;  // size of each of the two staging buffers
  int local_size = 0;
  size_t ring_offset(int channel, int from_local) const;
  size_t staging_offset(int parity) const;
  size_t total() const;
};

// All local segments of one communicator, mapped in this process.
class ShmHost : public HostMemory {
 public:
  // Collective over the local ranks (`local_ranks`: communicator ranks on this host, sorted).
  // Returns nullptr, after logging why, when shared memory cannot be used (too little space in
  // /dev/shm, no permission, ...); every local rank then reaches the same answer.
  // `names[i]` is how messages call local rank i (e.g. "rank 5").
  static std::unique_ptr<ShmHost> create(Store& store, uint64_t comm_id, int rank,
                                         const std::vector<int>& local_ranks,
                                         std::vector<std::string> names, Deadline deadline);
  ~ShmHost() override;

  int local_size() const override { return static_cast<int>(local_ranks_.size()); }
  int local_index() const override { return local_index_; }
  int local_index_of(int rank) const override;
  const std::string& name_of(int local) const override { return names_of_[local]; }
  std::atomic<uint64_t>& counter(int local, RoundCounter c) const override;
  OpStamp& stamp(int local, int parity) const override { return header(local).stamp[parity]; }
  char* staging(int local, int parity) const override;
  size_t staging_bytes() const override { return layout_.staging_bytes; }
  void check_peer(int local) const override;
  bool cma() const override { return cma_; }
  int pid_of(int local) const override { return header(local).pid; }

  const ShmLayout& layout() const { return layout_; }
  SegmentHeader& header(int local) const;
  RingHeader& ring(int channel, int owner_local, int from_local) const;
  char* ring_data(int channel, int owner_local, int from_local) const;

  // Records this rank's failure in its segment, once; the others see it while they wait.
  void mark_aborted(const std::string& why);

 private:
  ShmHost() = default;
  std::vector<int> local_ranks_;
  int local_index_ = -1;
  ShmLayout layout_;
  std::vector<char*> bases_;
  std::vector<std::string> names_;     // segment names in /dev/shm
  std::vector<std::string> names_of_;  // rank names for messages
  uint64_t my_pid_ns_ = 0;
  bool cma_ = false;
};

}  // namespace plexus
