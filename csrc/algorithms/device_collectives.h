// Running one launch of a device collective (csrc/algorithms/device_programs.h): on a GPU as a
// kernel enqueued on a stream (device_kernels.cu, only in CUDA builds), or on the emulated device
// of the tests, where "device memory" is shared host memory and the calling thread runs the
// blocks in turn (device_emulated.cc, every build). Plain C++: callers need no CUDA headers.
#pragma once

#include "transport/cuda_ipc/signal_pad.h"

namespace plexus {

// Grid size of the device collectives for a communicator of `world` ranks: the same on every
// rank, and small enough that the kernels of all ranks sharing one GPU are resident at once
// (they wait for each other): 32 x 2, 16 x 4, 8 x 8 blocks of 512 threads, two per SM, fit the
// smallest data-centre GPUs.
inline int device_blocks(int world) {
  return world <= 2 ? signals::kMaxBlocks : world <= 4 ? signals::kMaxBlocks / 2 : signals::kMaxBlocks / 4;
}

#ifdef PLEXUS_WITH_CUDA
// Enqueues `call` on `stream` (a cudaStream_t) of the current device; returns at once. Throws
// plexus::Error if the launch fails, TypeMismatch for an op the dtype cannot take.
void launch_device_collective(const signals::DeviceCall& call, void* stream);
#endif

// Runs `call` to the end on this thread (peers run theirs in their own processes).
void run_emulated_collective(const signals::DeviceCall& call);

}  // namespace plexus
