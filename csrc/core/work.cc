#include "core/work.h"

#include <unistd.h>

#include <chrono>

#include "base/error.h"

namespace plexus {

void Work::set_done() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
}

void Work::set_failed(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::move(error);
    done_ = true;
  }
  cv_.notify_all();
}

bool Work::wait(double timeout_s) {
  if (made_before_fork(generation_) && !is_completed())  // the thread that would finish it is the parent's
    throw Error(sig_.describe() + " was started before a fork and this is the forked child (pid " +
                std::to_string(getpid()) + "): a child cannot wait for its parent's calls");
  std::unique_lock<std::mutex> lock(mu_);
  if (timeout_s < 0) {
    cv_.wait(lock, [this] { return done_; });
  } else if (!cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [this] { return done_; })) {
    return false;
  }
  if (error_) std::rethrow_exception(error_);
  return true;
}

bool Work::is_completed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

bool Work::succeeded() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ && !error_;
}

std::exception_ptr Work::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

}  // namespace plexus
