// Running one launch of a device collective (csrc/algorithms/device_programs.h): on a GPU as a
// kernel enqueued on a stream (device_kernels.cu, only in CUDA builds), or on the emulated device
// of the tests, where "device memory" is shared host memory and the calling thread runs the
// blocks in turn (device_emulated.cc, every build). Plain C++: callers need no CUDA headers.
#pragma once

#include <algorithm>

#include "transport/cuda_ipc/signal_pad.h"

namespace plexus {

// Grid size of the device collectives for a communicator of `world` ranks on a GPU of
// `multiprocessors` SMs: small enough that the kernels of all ranks sharing one GPU are resident
// at once (they wait for each other): at most one SM per rank's block (two blocks of 512 threads
// fit an SM), and 64 x 2, 32 x 4, 16 x 8 blocks. On an H200, 2 ranks, 64 blocks each reached 69%
// of cupy's a + b at 256 MiB (32 blocks: 59%, 128: 68%). PLEXUS_DEVICE_BLOCKS
// sets it, up to 128 (kMaxBlocks). Every rank must use the same grid: the group agrees on
// the smallest.
inline int device_blocks(int world, int multiprocessors) {
  constexpr int kDefaultBudget = 128;  // blocks of all ranks together, by default
  return std::max(1, std::min(kDefaultBudget / std::max(world, 2), multiprocessors / world));
}

#ifdef PLEXUS_WITH_CUDA
// Enqueues `call` on `stream` (a cudaStream_t) of the current device; returns at once. Throws
// plexus::Error if the launch fails, TypeMismatch for an op the dtype cannot take.
void launch_device_collective(const signals::DeviceCall& call, void* stream);
#endif

// Runs `call` to the end on this thread (peers run theirs in their own processes).
void run_emulated_collective(const signals::DeviceCall& call);

}  // namespace plexus
