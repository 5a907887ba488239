// Lanes: where the native device path runs a group's point-to-point messages, one lane per peer
// and direction, beside the caller's stream (as NCCL runs p2p on streams of its own). A receive
// that waits for its sender then never holds up the caller's later work, so two ranks that each
// send and then receive, or receive and then send, both go on. On a GPU a lane is a CUDA stream
// that first waits for what the caller's stream holds; on the emulated device of the tests, a
// thread that runs the lane's calls in order (the emulated caller's stream has nothing pending).
#pragma once

#include <functional>
#include <memory>

namespace plexus {

// One call on a lane, and when it is done.
class LaneWork {
 public:
  virtual ~LaneWork() = default;
  virtual bool done() = 0;                     // without waiting
  virtual void wait() = 0;                     // this thread waits
  virtual void stream_wait(void* stream) = 0;  // `stream` waits (on a GPU; the host does not)
};

class Lane {
 public:
  virtual ~Lane() = default;
  // Runs `work(the lane's stream)` after the lane's earlier calls and after what `after` (the
  // caller's stream) holds now.
  virtual std::shared_ptr<LaneWork> run(void* after, std::function<void(void*)> work) = 0;
  // Whether everything run on the lane is done.
  bool idle() { return !last_ || last_->done(); }

 protected:
  std::shared_ptr<LaneWork> last_;  // what run() returned last (the lane runs in order)
};

std::unique_ptr<Lane> make_emulated_lane();
#ifdef PLEXUS_WITH_CUDA
std::unique_ptr<Lane> make_cuda_lane(int device);
#endif

}  // namespace plexus
