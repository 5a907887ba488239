// A collective in flight: completes on the progress thread, awaited by the caller.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>

#include "base/fork.h"
#include "base/signature.h"

namespace plexus {

class Work {
 public:
  explicit Work(const Signature& sig) : sig_(sig) {}

  void set_done();
  void set_failed(std::exception_ptr error);

  // Waits up to `timeout_s` seconds (negative: no limit). Returns true once the work is done,
  // false if the wait ran out first; rethrows the work's failure.
  bool wait(double timeout_s);
  bool is_completed() const;
  // The failure, or nullptr while running or after success.
  std::exception_ptr error() const;
  bool succeeded() const;  // done without an error (one lock: the small-call hot path asks it)
  std::string what() const { return sig_.describe(); }
  // For receives from any source: the rank the message came from (-1 until known).
  void set_source(int rank) { source_.store(rank); }
  int source() const { return source_.load(); }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  Signature sig_;
  std::atomic<int> source_{-1};
  int generation_ = fork_generation();  // a forked child never sees the parent's work finish
};

}  // namespace plexus
