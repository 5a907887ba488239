// Picks the widest kernel variant this CPU runs.
#include "reduce/cpu_reduce.h"

namespace plexus {
namespace cpu {

#define PLEXUS_DECLARE_VARIANT(ns)                                                          \
  namespace ns {                                                                            \
  void reduce(RedOp, DType, void*, const void* const*, int, size_t, double);                \
  void scale(DType, void*, const void*, size_t, double);                                    \
  }
PLEXUS_DECLARE_VARIANT(generic)
#if defined(PLEXUS_HAVE_AVX2_VARIANT)
PLEXUS_DECLARE_VARIANT(avx2)
#endif

namespace {
bool use_avx2() {
#if defined(PLEXUS_HAVE_AVX2_VARIANT)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                          __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}
}  // namespace

void reduce(RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
            double post_scale) {
  if (n == 0 || nsrcs <= 0) return;
#if defined(PLEXUS_HAVE_AVX2_VARIANT)
  if (use_avx2()) return avx2::reduce(op, dtype, dst, srcs, nsrcs, n, post_scale);
#endif
  generic::reduce(op, dtype, dst, srcs, nsrcs, n, post_scale);
}

void scale(DType dtype, void* dst, const void* src, size_t n, double factor) {
  if (n == 0) return;
#if defined(PLEXUS_HAVE_AVX2_VARIANT)
  if (use_avx2()) return avx2::scale(dtype, dst, src, n, factor);
#endif
  generic::scale(dtype, dst, src, n, factor);
}

const char* kernel_variant() { return use_avx2() ? "avx2" : "generic"; }

}  // namespace cpu
}  // namespace plexus
