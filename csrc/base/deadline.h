// A point in time after which a blocking wait gives up.
#pragma once

#include <chrono>

namespace plexus {

using Clock = std::chrono::steady_clock;

struct Deadline {
  Clock::time_point at;

  static Deadline after_seconds(double s) {
    return Deadline{Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(s))};
  }
  bool passed() const { return Clock::now() >= at; }
  // Milliseconds left for poll(), clamped to [0, cap_ms].
  int poll_ms(int cap_ms = 1000) const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at - Clock::now()).count();
    if (left < 0) return 0;
    return left > cap_ms ? cap_ms : static_cast<int>(left) + 1;
  }
};

}  // namespace plexus
