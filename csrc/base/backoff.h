// Waiting by looking (shared memory has no descriptor to poll): spin, then yield, then sleep.
#pragma once

#include <cstdint>

#include "base/deadline.h"

namespace plexus {

// Waits with a spin, then yields, then short sleeps: prompt when the peer is on another core,
// still fair when there are more ranks than cores.
class Backoff {
 public:
  // How long waiters spin before yielding, from the number of ranks sharing this host's CPUs
  // (PLEXUS_SHM_SPIN overrides it).
  static void set_local_ranks(int local_ranks);
  void pause();
  // True about every millisecond of waiting: time for the slower checks (liveness, deadline).
  bool time_to_check();
  void reset() { spins_ = 0; }

 private:
  uint64_t spins_ = 0;
  Clock::time_point last_check_ = Clock::now();
};

}  // namespace plexus
