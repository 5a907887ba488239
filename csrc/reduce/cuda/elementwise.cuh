// Element-wise pieces of the CUDA reductions, shared by the reduction kernels
// (csrc/reduce/cuda/reduce.cu) and the device collectives (csrc/algorithms/device_kernels.cu):
// storage and accumulator types converting exactly as cpu_kernels.inc does, the ops, 16-byte
// vectors. Include from .cu files only.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "reduce/half_bits.h"

namespace plexus {
namespace cuda {
namespace elementwise {
struct Half {
  uint16_t bits;
};
struct BF16 {
  uint16_t bits;
};

// Storage type -> accumulator type, converting exactly as cpu_kernels.inc does (NaNs included).
template <typename T>
struct Acc {
  using type = T;
  __device__ static T load(T v) { return v; }
  __device__ static T store(T v) { return v; }
};
template <>
struct Acc<Half> {
  using type = float;
  // Integer operations and a multiply (reduce/half_bits.h), not the conversion unit; NaNs keep
  // sign and payload (quieted), as on the CPU, where the hardware conversion may canonicalise.
  __device__ static float load(Half h) { return half_bits_to_float(h.bits); }
  // The hardware's round to nearest even, with NaNs turned into the CPU's NaN (a select).
  __device__ static Half store(float f) { return Half{nan_as_cpu(f, __half_as_ushort(__float2half_rn(f)))}; }
  // Two at a time: one conversion instruction for both (cvt.rn.f16x2.f32 on sm_80 and later).
  __device__ static void store2(float a, float b, Half& ha, Half& hb) {
    const __half2 h = __floats2half2_rn(a, b);
    ha.bits = nan_as_cpu(a, __half_as_ushort(__low2half(h)));
    hb.bits = nan_as_cpu(b, __half_as_ushort(__high2half(h)));
  }
  __device__ static uint16_t nan_as_cpu(float f, uint16_t converted) {
    const uint32_t u = __float_as_uint(f);
    const uint16_t nan = static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7E00u | ((u >> 13) & 0x3FFu));
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? nan : converted;
  }
};
template <>
struct Acc<BF16> {
  using type = float;
  __device__ static float load(BF16 v) { return __uint_as_float(static_cast<uint32_t>(v.bits) << 16); }
  __device__ static BF16 store(float f) {
    // Round to nearest even; keep NaN a (quiet) NaN: the CPU formula, exactly.
    uint32_t u = __float_as_uint(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return BF16{static_cast<uint16_t>(is_nan ? nan : rounded)};
  }
};

// Signed integers wrap (through unsigned arithmetic: signed overflow is undefined).
template <typename A>
__device__ A wrap_add(A a, A b) {
  if constexpr (std::is_integral_v<A> && std::is_signed_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
template <typename A>
__device__ A wrap_mul(A a, A b) {
  if constexpr (std::is_integral_v<A> && sizeof(A) < sizeof(unsigned)) {
    return static_cast<A>(static_cast<unsigned>(a) * static_cast<unsigned>(b));
  } else if constexpr (std::is_integral_v<A> && std::is_signed_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    return a * b;
  }
}

struct OpSum {
  template <typename A> __device__ static A apply(A a, A b) { return wrap_add(a, b); }
};
struct OpProd {
  template <typename A> __device__ static A apply(A a, A b) { return wrap_mul(a, b); }
};
// NaN propagates, as in numpy.minimum (and the CPU kernels).
struct OpMin {
  template <typename A> __device__ static A apply(A a, A b) { return (a < b || a != a) ? a : b; }
};
struct OpMax {
  template <typename A> __device__ static A apply(A a, A b) { return (a > b || a != a) ? a : b; }
};
struct OpBand {
  template <typename A> __device__ static A apply(A a, A b) { return a & b; }
};
struct OpBor {
  template <typename A> __device__ static A apply(A a, A b) { return a | b; }
};
struct OpBxor {
  template <typename A> __device__ static A apply(A a, A b) { return a ^ b; }
};


template <typename T>
union Vec {
  uint4 raw;
  T e[16 / sizeof(T)];
};

// Combines source j's values into acc (the first source initialises it).
template <typename T, typename Op, int N>
__device__ void combine(typename Acc<T>::type (&acc)[N], const T (&v)[N], bool first) {
  if (first) {
#pragma unroll
    for (int k = 0; k < N; ++k) acc[k] = Acc<T>::load(v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) acc[k] = Op::apply(acc[k], Acc<T>::load(v[k]));
  }
}

template <typename A, int N>
__device__ void apply_scale(A (&acc)[N], double post_scale) {
  if constexpr (std::is_floating_point_v<A>) {
    if (post_scale != 1.0) {
      const A s = static_cast<A>(post_scale);
#pragma unroll
      for (int k = 0; k < N; ++k) acc[k] *= s;
    }
  }
}

// A vector's results into storage: pairwise where the storage type converts two at once.
template <typename T, int N>
__device__ void store_vec(const typename Acc<T>::type (&acc)[N], T (&out)[N]) {
  if constexpr (std::is_same_v<T, Half>) {
#pragma unroll
    for (int k = 0; k < N; k += 2) Acc<Half>::store2(acc[k], acc[k + 1], out[k], out[k + 1]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = Acc<T>::store(acc[k]);
  }
}


// The vector at element `off` of op over every source (times post_scale), read Chunk sources
// at a time so their loads are in flight together. `Srcs` indexes like an array of const T*.
template <typename T, typename Op, int Chunk, typename Srcs>
__device__ Vec<T> reduce_vector(const Srcs& srcs, int nsrcs, size_t off, double post_scale) {
  typename Acc<T>::type acc[16 / sizeof(T)];
  for (int j0 = 0; j0 < nsrcs; j0 += Chunk) {
    Vec<T> in[Chunk];
#pragma unroll
    for (int c = 0; c < Chunk; ++c)
      if (j0 + c < nsrcs) in[c].raw = *reinterpret_cast<const uint4*>(srcs[j0 + c] + off);
#pragma unroll
    for (int c = 0; c < Chunk; ++c)
      if (j0 + c < nsrcs) combine<T, Op>(acc, in[c].e, j0 + c == 0);
  }
  apply_scale(acc, post_scale);
  Vec<T> out;
  store_vec<T>(acc, out.e);
  return out;
}

// Element `i` of op over every source (times post_scale).
template <typename T, typename Op, typename Srcs>
__device__ T reduce_scalar(const Srcs& srcs, int nsrcs, size_t i, double post_scale) {
  typename Acc<T>::type acc[1];
  for (int j = 0; j < nsrcs; ++j) {
    const T v[1] = {srcs[j][i]};
    combine<T, Op>(acc, v, j == 0);
  }
  apply_scale(acc, post_scale);
  return Acc<T>::store(acc[0]);
}

}  // namespace elementwise
}  // namespace cuda
}  // namespace plexus
