// float16 bits -> float, exactly, with integer operations and one multiply: no conversion
// instruction, which the GPU runs at a fraction of the rate of the rest (the CUDA kernels' half
// path was 69% of a device copy where bfloat16's, a shift, was 86%). NaNs keep their sign and
// payload and become quiet, as the CPU kernels convert them. Compiles for the host too, so a
// test can check it against numpy on all 65536 inputs.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define PLEXUS_HOST_DEVICE __host__ __device__
#else
#define PLEXUS_HOST_DEVICE
#endif

namespace plexus {

PLEXUS_HOST_DEVICE inline float float_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

PLEXUS_HOST_DEVICE inline uint32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

PLEXUS_HOST_DEVICE inline float half_bits_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7FFFu;
  // Exponent and mantissa moved into a float's fields, then scaled by 2^(127-15): exact for
  // normal numbers, subnormals (they come out normal) and zero.
  const uint32_t finite = bits_of_float(float_from_bits(magnitude << 13) * 0x1p112f);
  // Infinity and NaN: the largest exponent, the mantissa kept (NaN made quiet).
  const uint32_t mantissa = (magnitude & 0x3FFu) << 13;
  const uint32_t special = 0x7F800000u | mantissa | (mantissa ? 0x00400000u : 0u);
  return float_from_bits(sign | (magnitude >= 0x7C00u ? special : finite));
}

}  // namespace plexus
