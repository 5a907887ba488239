// Baseline x86-64 / aarch64 build of the kernels.
#define PLEXUS_KERNEL_NS generic
#include "reduce/cpu_kernels.inc"
