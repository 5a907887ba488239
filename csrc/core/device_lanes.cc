#include "core/device_lanes.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#ifdef PLEXUS_WITH_CUDA
#include "transport/cuda_ipc/cuda_ipc.h"
#endif

namespace plexus {
namespace {

class EmulatedWork : public LaneWork {
 public:
  void finish(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::move(error);
    done_ = true;
    cv_.notify_all();
  }
  bool done() override {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  void wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  void stream_wait(void*) override { wait(); }  // the emulated streams run nothing later

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

class EmulatedLane : public Lane {
 public:
  EmulatedLane() : thread_([this] { loop(); }) {}
  ~EmulatedLane() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    thread_.join();  // runs what is queued first (the owner aborted the waits of a dying group)
  }
  std::shared_ptr<LaneWork> run(void*, std::function<void(void*)> work) override {
    auto w = std::make_shared<EmulatedWork>();
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back(std::move(work), w);
    cv_.notify_all();
    return last_ = w;
  }

 private:
  void loop() {
    for (;;) {
      std::pair<std::function<void(void*)>, std::shared_ptr<EmulatedWork>> item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      std::exception_ptr error;
      try {
        item.first(nullptr);
      } catch (...) {
        error = std::current_exception();
      }
      item.second->finish(error);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<void(void*)>, std::shared_ptr<EmulatedWork>>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the rest is ready
};

#ifdef PLEXUS_WITH_CUDA
class CudaWork : public LaneWork {
 public:
  CudaWork(int device, void* event) : device_(device), event_(event) {}
  ~CudaWork() override {
    try {
      cuda_ipc::destroy_event(device_, event_);
    } catch (...) {  // at exit the context may be gone
    }
  }
  bool done() override { return cuda_ipc::query(device_, event_); }
  void wait() override { cuda_ipc::synchronize_event(device_, event_); }
  void stream_wait(void* stream) override { cuda_ipc::stream_wait(device_, stream, event_); }

 private:
  int device_;
  void* event_;
};

class CudaLane : public Lane {
 public:
  explicit CudaLane(int device)
      : device_(device), stream_(cuda_ipc::create_stream(device)), after_(cuda_ipc::create_event(device, false).event) {}
  ~CudaLane() override {
    try {
      if (last_) last_->wait();  // the peers' workspaces are unmapped after this
    } catch (...) {
    }
    last_.reset();
    try {
      cuda_ipc::destroy_event(device_, after_);
      cuda_ipc::destroy_stream(device_, stream_);
    } catch (...) {  // at exit the context may be gone
    }
  }
  std::shared_ptr<LaneWork> run(void* after, std::function<void(void*)> work) override {
    cuda_ipc::record(device_, after_, after);  // a wait takes the event as recorded now: reusable
    cuda_ipc::stream_wait(device_, stream_, after_);
    work(stream_);
    void* done = cuda_ipc::create_event(device_, false).event;
    try {
      cuda_ipc::record(device_, done, stream_);
    } catch (...) {
      cuda_ipc::destroy_event(device_, done);
      throw;
    }
    return last_ = std::make_shared<CudaWork>(device_, done);
  }

 private:
  int device_;
  void* stream_;
  void* after_;
};
#endif

}  // namespace

std::unique_ptr<Lane> make_emulated_lane() { return std::make_unique<EmulatedLane>(); }

#ifdef PLEXUS_WITH_CUDA
std::unique_ptr<Lane> make_cuda_lane(int device) { return std::make_unique<CudaLane>(device); }
#endif

}  // namespace plexus
