// Spin limits of Backoff, shared by every waiter in the process.
#include "base/backoff.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "base/config.h"

namespace plexus {

namespace {
// Pause instructions before a waiter starts yielding its core. Oversubscribed hosts (more local
// ranks than CPUs) yield almost at once: spinning there burns the core the awaited rank needs.
// Process-wide, and once oversubscribed always so: a sub-group does not undo what the world saw.
std::atomic<uint64_t> g_spin_limit{2000};
std::atomic<int> g_most_local_ranks{0};

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}
}  // namespace

void Backoff::set_local_ranks(int local_ranks) {
  int most = g_most_local_ranks.load();
  while (most < local_ranks && !g_most_local_ranks.compare_exchange_weak(most, local_ranks)) {
  }
  most = std::max(most, local_ranks);
  const uint64_t fallback = most > usable_cpus() ? 50 : 2000;
  g_spin_limit.store(std::min<uint64_t>(env_bytes("PLEXUS_SHM_SPIN", fallback), uint64_t{1} << 40));
}

void Backoff::pause() {
  ++spins_;
  const uint64_t spin = g_spin_limit.load(std::memory_order_relaxed);
  if (spins_ < spin) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  } else if (spins_ < spin + 2000) {
    sched_yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

bool Backoff::time_to_check() {
  if ((spins_ & 255) != 0 && spins_ < g_spin_limit.load(std::memory_order_relaxed) + 2000) return false;
  auto now = Clock::now();
  if (now - last_check_ < std::chrono::milliseconds(1)) return false;
  last_check_ = now;
  return true;
}

}  // namespace plexus
