// Element-wise reduction kernels on the CPU for every dtype x op pair that makes sense.
#pragma once

#include <cstddef>

#include "base/types.h"

namespace plexus {
namespace cpu {

// dst[i] = srcs[0][i] (op) srcs[1][i] (op) ... (op) srcs[nsrcs-1][i], multiplied by `post_scale`
// when it is not 1 (AVG divides, PREMUL_SUM scales; floating dtypes only). AVG and PREMUL_SUM
// combine as SUM. float16/bfloat16 accumulate in float32 and round once. `dst` may alias any
// source. The caller has checked op_dtype_problem(op, dtype).
void reduce(RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
            double post_scale = 1.0);

// Convenience for the common two-input case.
inline void reduce2(RedOp op, DType dtype, void* dst, const void* a, const void* b, size_t n,
                    double post_scale = 1.0) {
  const void* srcs[2] = {a, b};
  reduce(op, dtype, dst, srcs, 2, n, post_scale);
}

// dst[i] = src[i] * factor for floating dtypes (PREMUL_SUM's pre-scaling, AVG on one rank).
void scale(DType dtype, void* dst, const void* src, size_t n, double factor);

// Which code path the kernels run on this CPU ("avx2" or "generic").
const char* kernel_variant();

}  // namespace cpu
}  // namespace plexus
