// AVX2 + F16C + FMA build of the kernels (compile flags set in CMakeLists.txt); empty elsewhere.
#if defined(PLEXUS_HAVE_AVX2_VARIANT)
#define PLEXUS_KERNEL_NS avx2
#include "reduce/cpu_kernels.inc"
#endif
