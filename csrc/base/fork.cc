#include "base/fork.h"

#include <pthread.h>

#include <atomic>
#include <mutex>

namespace plexus {

namespace {
std::atomic<int> g_generation{0};
}

int fork_generation() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { ++g_generation; }); });
  return g_generation.load(std::memory_order_relaxed);
}

}  // namespace plexus
