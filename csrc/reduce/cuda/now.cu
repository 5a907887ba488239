// reduce_now / copy_now / wait_event (cuda_reduce.h): device work done at once, off the callers'
// streams.
#include <cuda_runtime.h>

#include <mutex>
#include <string>

#include "base/error.h"
#include "reduce/cuda_reduce.h"
#include "transport/cuda_ipc/cuda_ipc.h"

namespace plexus {
namespace cuda {
namespace {

constexpr int kMaxDevices = 64;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

// plexus's own non-blocking stream of `device` (created once, kept for the process: the legacy
// default stream would wait for the callers' work). The caller has made `device` current.
cudaStream_t own_stream(int device, const char* what) {
  static std::mutex mu;
  static cudaStream_t streams[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (!streams[device]) check(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking), what);
  return streams[device];
}

// Runs `body(stream)` on `device` with its own stream, then waits for the stream. The calling
// thread's device (its driver context) is put back, and none is made current where there was none.
template <typename Body>
void on_own_stream(int device, const char* what, Body body) {
  if (device < 0 || device >= kMaxDevices)
    throw InvalidArgument(std::string(what) + ": no device " + std::to_string(device));
  std::string why;
  if (!runtime_available(&why)) throw Error(std::string(what) + ": CUDA runtime not available: " + why);
  cuda_ipc::DeviceGuard on(device);
  cudaStream_t stream = own_stream(device, what);
  body(stream);
  check(cudaStreamSynchronize(stream), what);
}

}  // namespace

void reduce_now(int device, RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
                double post_scale) {
  on_own_stream(device, "cuda::reduce_now", [&](cudaStream_t s) {
    void* dsts[1] = {dst};
    reduce_to(op, dtype, dsts, 1, srcs, nsrcs, n, post_scale, s);
  });
}

void copy_now(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  on_own_stream(device, "cuda::copy_now", [&](cudaStream_t s) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cuda::copy_now: cudaMemcpyAsync");
  });
}

void wait_event(int device, void* event) {
  cuda_ipc::DeviceGuard on(device);
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cuda::wait_event: cudaEventSynchronize");
}

}  // namespace cuda
}  // namespace plexus
