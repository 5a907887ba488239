// Collectives of device arrays between hosts, straight through the peers' message ports (UCX
// moves the device memory itself, GPUDirect RDMA where the system has it): every rank exchanges
// its blocks with every other rank at once, in one round (two for all_reduce: reduce-scatter, then
// all-gather), and reduces in the arrays' own memory (the CUDA kernels for device memory, the CPU
// ones for host memory). As many bytes leave and enter each rank as in a ring, in one step instead
// of N-1. For groups whose every pair's port moves that memory (plexus.device.direct decides).
#pragma once

#include <cstddef>

#include "algorithms/algorithm.h"

namespace plexus {

// Where the call's arrays are, and the working memory it needs there.
struct PortPlace {
  MemoryKind memory = MemoryKind::kHost;
  int device = 0;           // the CUDA device of the arrays (kCuda)
  void* scratch = nullptr;  // port_flat_scratch_bytes() in the arrays' memory: the blocks to reduce
  size_t scratch_bytes = 0;
  // kCuda: a cudaEvent_t recorded on the caller's stream at the call, waited for before UCX is
  // handed the arrays (so the caller's thread need not wait for its stream); null: ready now.
  void* ready_event = nullptr;
};

// The working memory a call needs on `rank` (0 for those that only move data).
size_t port_flat_scratch_bytes(CollKind kind, size_t count, DType dtype, int size, int rank, int root);
void port_flat(OpContext& ctx, const CollArgs& args, const PortPlace& place);

}  // namespace plexus
