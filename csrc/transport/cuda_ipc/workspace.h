// Where a device communicator's workspace lives (its signal pad and scratch sets, see
// signal_pad.h): device memory that peers map through CUDA IPC, or, for the emulated device of
// the tests, a POSIX shared-memory file that every rank maps. Each also gives the error box the
// kernels write and the host reads.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "transport/cuda_ipc/signal_pad.h"

namespace plexus {

class WorkspaceMemory {
 public:
  virtual ~WorkspaceMemory() = default;
  // This rank's workspace of `bytes`, zeroed (once).
  virtual void* allocate(size_t bytes) = 0;
  // What a peer passes to open() to map it (at most 64 bytes).
  virtual std::string handle() const = 0;
  // A peer's workspace, mapped here; close() when done.
  virtual void* open(const std::string& handle, size_t bytes) = 0;
  virtual void close(void* base, size_t bytes) = 0;
  // Every peer has mapped this rank's workspace (the emulated file's name can go).
  virtual void seal() {}
  // The error box: as the host reads it, and as kernels address it.
  virtual signals::ErrorBox* box() = 0;
  virtual signals::ErrorBox* box_for_device() = 0;
};

#ifdef PLEXUS_WITH_CUDA
std::unique_ptr<WorkspaceMemory> make_cuda_workspace(int device);
#endif
std::unique_ptr<WorkspaceMemory> make_emulated_workspace();

}  // namespace plexus
