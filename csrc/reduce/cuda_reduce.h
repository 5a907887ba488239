// Element-wise reduction kernels on NVIDIA GPUs (csrc/reduce/cuda/reduce.cu). Plain C++: callers
// need no CUDA headers. Only defined when the build has CUDA (PLEXUS_WITH_CUDA).
#pragma once

#include <cstddef>
#include <string>

#include "base/types.h"

namespace plexus {
namespace cuda {

// Same contract as cpu::reduce, on device memory, enqueued on `stream` (a cudaStream_t; nullptr
// is the legacy default stream) of the calling thread's current device, returning at once:
// dst[i] = srcs[0][i] (op) ... (op) srcs[nsrcs-1][i], times `post_scale` when it is not 1
// (floating dtypes). float16/bfloat16 accumulate in float32 and round once, whatever nsrcs is.
// `dst` may alias a source. Throws TypeMismatch for an op the dtype cannot take,
// InvalidArgument for no sources or a pointer not aligned to the element size, and Error when
// the CUDA runtime is missing or the launch fails.
void reduce(RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
            double post_scale, void* stream);

// The most destinations reduce_to() writes in one pass.
constexpr int kMaxReduceDsts = 8;

// reduce() that stores the result into each of `ndsts` (1..kMaxReduceDsts) destinations, reading
// the sources once. Element i of every destination is written after every source's element i is
// read, so destinations may alias sources (in place) as long as ranges only meet index for index.
void reduce_to(RedOp op, DType dtype, void* const* dsts, int ndsts, const void* const* srcs, int nsrcs, size_t n,
               double post_scale, void* stream);

// For work that is not on a caller's stream (collectives of device arrays between hosts,
// algorithms/port_flat.cc): reduce_to() or a device-to-device copy on `device`, on a stream of
// plexus's own per device (it waits for no other stream), and waited for before returning.
void reduce_now(int device, RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
                double post_scale);
void copy_now(int device, void* dst, const void* src, size_t bytes);
// Blocks until `event` (a cudaEvent_t recorded on a caller's stream of `device`) has happened.
void wait_event(int device, void* event);

// Whether a CUDA driver and at least one device are usable. Never throws, never crashes
// without a driver; `why` (optional) gets the runtime's reason when not.
bool runtime_available(std::string* why = nullptr);

// The CUDA runtime version this was built against, e.g. 13000.
int runtime_version_built();

}  // namespace cuda
}  // namespace plexus
