// The emulated device of the tests: device_programs.h run by the calling CPU thread over
// workspaces in shared memory, the blocks one after another. Every rank runs its blocks in the
// same order and block b waits only for block b of its peers, so ranks move in step. The
// flags, sequence numbers, deadlines, mismatch checks and errors are the GPU's own code.
#include <sched.h>
#include <time.h>

#include <atomic>
#include <cstring>

#include "algorithms/device_collectives.h"
#include "algorithms/device_programs.h"
#include "base/types.h"
#include "reduce/cpu_reduce.h"

namespace plexus {
namespace {

using signals::DeviceCall;

struct HostExec {
  DType dtype;
  RedOp op;
  double scale;

  bool leader() const { return true; }
  void sync() const {}
  bool sync_or(bool v) const { return v; }
  uint64_t broadcast(uint64_t v) const { return v; }
  uint64_t load_acquire(const uint64_t* p) const { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
  void store_release(uint64_t* p, uint64_t v) const { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
  template <typename P>
  uint32_t load_volatile(P* p) const {
    return __atomic_load_n(reinterpret_cast<const volatile uint32_t*>(p), __ATOMIC_ACQUIRE);
  }
  template <typename P>
  void publish(P* p, uint32_t v) const {
    __atomic_store_n(reinterpret_cast<volatile uint32_t*>(p), v, __ATOMIC_RELEASE);
  }
  bool cas(uint32_t* p, uint32_t expected, uint32_t value) const {
    return __atomic_compare_exchange_n(p, &expected, value, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
  }
  void fence_system() const { std::atomic_thread_fence(std::memory_order_seq_cst); }
  uint64_t now_ns() const {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
  }
  // Peers are processes that may share this core (4 ranks on 2 cores in CI): give it up.
  void pause() const { sched_yield(); }
  void copy(void* dst, const void* src, size_t bytes) const {
    if (dst != src && bytes) std::memmove(dst, src, bytes);
  }
  void reduce(void* const* dsts, int nd, const void* const* srcs, int ns, size_t n) const {
    if (n == 0) return;
    // cpu::reduce writes one destination, which may alias a source: the first one, then copies.
    cpu::reduce(op, dtype, dsts[0], srcs, ns, n, scale);
    for (int d = 1; d < nd; ++d) std::memmove(dsts[d], dsts[0], n * dtype_size(dtype));
  }
};

}  // namespace

void run_emulated_collective(const DeviceCall& call) {
  HostExec x{static_cast<DType>(call.dtype), static_cast<RedOp>(call.op), call.scale};
  for (int b = 0; b < call.nblocks; ++b) device_programs::run_block(x, call, b);
}

}  // namespace plexus
