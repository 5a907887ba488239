// A collective in flight: completes on the progress thread, awaited by the caller.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>

namespace plexus {

class Work {
 public:
  explicit Work(std::string what) : what_(std::move(what)) {}

  void set_done();
  void set_failed(std::exception_ptr error);

  // Waits up to `timeout_s` seconds (negative: no limit). Returns true once the work is done,
  // false if the wait ran out first; rethrows the work's failure.
  bool wait(double timeout_s);
  bool is_completed() const;
  // The failure, or nullptr while running or after success.
  std::exception_ptr error() const;
  const std::string& what() const { return what_; }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  std::string what_;
};

}  // namespace plexus
