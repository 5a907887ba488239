// The device collectives as CUDA kernels: device_programs.h run by blocks of kThreads threads.
// Flags use release/acquire at system scope (peers may be other processes and other GPUs),
// deadlines %globaltimer. One kernel per (storage type, op) for the reducing programs, one byte
// kernel for the copying ones and for bitwise ops (the same bytes whatever the integer width).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "algorithms/device_collectives.h"
#include "algorithms/device_programs.h"
#include "base/error.h"
#include "base/types.h"
#include "reduce/cuda/elementwise.cuh"

namespace plexus {
namespace {

using namespace cuda::elementwise;
using signals::DeviceCall;
using signals::kMaxRanks;

constexpr int kThreads = 512;
constexpr int kUnroll = 4;  // 16-byte loads each thread keeps in flight when copying
constexpr int kChunk = 4;   // sources loaded together when reducing

template <typename T, typename Op>
struct DeviceExec {
  double scale;

  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sync() const { __syncthreads(); }
  __device__ bool sync_or(bool v) const { return __syncthreads_or(v) != 0; }
  __device__ uint64_t broadcast(uint64_t v) const {
    __shared__ uint64_t slot;
    if (leader()) slot = v;
    __syncthreads();
    const uint64_t r = slot;
    __syncthreads();
    return r;
  }
  __device__ uint64_t load_acquire(const uint64_t* p) const {
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
  }
  __device__ void store_release(uint64_t* p, uint64_t v) const {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
  }
  template <typename P>
  __device__ uint32_t load_volatile(P* p) const {
    return *reinterpret_cast<const volatile uint32_t*>(p);
  }
  template <typename P>
  __device__ void publish(P* p, uint32_t v) const {
    *reinterpret_cast<volatile uint32_t*>(p) = v;
  }
  __device__ bool cas(uint32_t* p, uint32_t expected, uint32_t value) const {
    return atomicCAS_system(p, expected, value) == expected;
  }
  __device__ void fence_system() const { __threadfence_system(); }
  __device__ uint64_t now_ns() const {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  }
  __device__ void pause() const { __nanosleep(64); }

  // The block copies `bytes`: 16-byte vectors, kUnroll in flight per thread, where both
  // pointers share their offset within 16 bytes; bytes otherwise.
  __device__ void copy(void* dst_v, const void* src_v, size_t bytes) const {
    char* dst = static_cast<char*>(dst_v);
    const char* src = static_cast<const char*>(src_v);
    if (dst == src || bytes == 0) return;
    const size_t mis = reinterpret_cast<uintptr_t>(dst) % 16;
    size_t head = bytes, nvec = 0;
    if (reinterpret_cast<uintptr_t>(src) % 16 == mis) {
      head = mis ? min(bytes, 16 - mis) : 0;
      nvec = (bytes - head) / 16;
    }
    const uint4* s = reinterpret_cast<const uint4*>(src + head);
    uint4* d = reinterpret_cast<uint4*>(dst + head);
    const size_t step = blockDim.x;
    size_t i = threadIdx.x;
    for (; i + (kUnroll - 1) * step < nvec; i += kUnroll * step) {
      uint4 v[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) v[k] = s[i + k * step];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) d[i + k * step] = v[k];
    }
    for (; i < nvec; i += step) d[i] = s[i];
    const size_t tail = head + nvec * 16;
    for (size_t j = threadIdx.x; j < head + (bytes - tail); j += step) {
      const size_t at = j < head ? j : tail + (j - head);
      dst[at] = src[at];
    }
  }

  // dsts[d][i] = op over srcs[j][i] (times scale), for i < n elements of T.
  __device__ void reduce(void* const* dsts_v, int nd, const void* const* srcs_v, int ns, size_t n) const {
    constexpr int V = 16 / sizeof(T);
    const T* srcs[kMaxRanks];
    T* dsts[kMaxRanks];
    const uintptr_t mis = reinterpret_cast<uintptr_t>(dsts_v[0]) % 16;
    bool same = true;
    for (int d = 0; d < nd; ++d) {
      dsts[d] = static_cast<T*>(dsts_v[d]);
      same = same && reinterpret_cast<uintptr_t>(dsts_v[d]) % 16 == mis;
    }
    for (int j = 0; j < ns; ++j) {
      srcs[j] = static_cast<const T*>(srcs_v[j]);
      same = same && reinterpret_cast<uintptr_t>(srcs_v[j]) % 16 == mis;
    }
    size_t head = n, nvec = 0;
    if (same) {
      head = mis ? min(n, (16 - mis) / sizeof(T)) : 0;
      nvec = (n - head) / V;
    }
    const size_t step = blockDim.x;
    for (size_t v = threadIdx.x; v < nvec; v += step) {
      const size_t off = head + v * V;
      const Vec<T> o = reduce_vector<T, Op, kChunk>(srcs, ns, off, scale);
      for (int d = 0; d < nd; ++d) *reinterpret_cast<uint4*>(dsts[d] + off) = o.raw;
    }
    const size_t tail = head + nvec * V;
    for (size_t i = threadIdx.x; i < head + (n - tail); i += step) {
      const size_t at = i < head ? i : tail + (i - head);
      const T r = reduce_scalar<T, Op>(srcs, ns, at, scale);
      for (int d = 0; d < nd; ++d) dsts[d][at] = r;
    }
  }
};

template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads, 2) collective_kernel(DeviceCall call) {
  DeviceExec<T, Op> x{call.scale};
  device_programs::run_block(x, call, static_cast<int>(blockIdx.x));
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("device collective: ") + what + ": " + cudaGetErrorName(e) + " (" +
                cudaGetErrorString(e) + ")");
  }
}

template <typename T, typename Op>
void launch(const DeviceCall& c, cudaStream_t stream) {
  collective_kernel<T, Op><<<c.nblocks, kThreads, 0, stream>>>(c);
  check(cudaGetLastError(), "kernel launch");
}

template <typename T>
void by_op(const DeviceCall& c, cudaStream_t st) {
  switch (static_cast<RedOp>(c.op)) {
    case RedOp::kSum: case RedOp::kAvg: case RedOp::kPremulSum: return launch<T, OpSum>(c, st);
    case RedOp::kProduct: return launch<T, OpProd>(c, st);
    case RedOp::kMin: return launch<T, OpMin>(c, st);
    case RedOp::kMax: return launch<T, OpMax>(c, st);
    default: throw InvalidArgument(std::string("device collective: no kernel for op ") + op_name(static_cast<RedOp>(c.op)));
  }
}

bool reduces(uint32_t program) {
  using namespace signals;
  return program == kOneShotAllReduce || program == kTwoShotAllReduce || program == kReduceScatter ||
         program == kReduce || program == kDirectAllReduce;
}

}  // namespace

void launch_device_collective(const DeviceCall& call, void* stream_v) {
  auto st = static_cast<cudaStream_t>(stream_v);
  const DType dtype = static_cast<DType>(call.dtype);
  RedOp op = static_cast<RedOp>(call.op);
  if (!reduces(call.program)) return launch<uint8_t, OpSum>(call, st);  // copies: any element size
  std::string problem = op_dtype_problem(op, dtype);
  if (!problem.empty()) throw TypeMismatch("device collective: " + problem);
  if (dtype == DType::kBool) {
    if (op == RedOp::kSum || op == RedOp::kMax) op = RedOp::kBor;
    if (op == RedOp::kProduct || op == RedOp::kMin) op = RedOp::kBand;
  }
  if (op == RedOp::kBand || op == RedOp::kBor || op == RedOp::kBxor) {
    // Bitwise: the same bytes whatever the width, so the call runs on bytes (every rank slices
    // them alike; the signature and the record keep the real dtype and count).
    DeviceCall c = call;
    const uint64_t es = dtype_size(dtype);
    c.dtype = static_cast<uint32_t>(DType::kUInt8);
    c.count *= es;
    c.stride *= es;
    if (op == RedOp::kBand) return launch<uint8_t, OpBand>(c, st);
    if (op == RedOp::kBor) return launch<uint8_t, OpBor>(c, st);
    return launch<uint8_t, OpBxor>(c, st);
  }
  switch (dtype) {
    case DType::kFloat16: return by_op<Half>(call, st);
    case DType::kBFloat16: return by_op<BF16>(call, st);
    case DType::kFloat32: return by_op<float>(call, st);
    case DType::kFloat64: return by_op<double>(call, st);
    case DType::kInt8: return by_op<int8_t>(call, st);
    case DType::kUInt8: return by_op<uint8_t>(call, st);
    case DType::kInt32: return by_op<int32_t>(call, st);
    case DType::kInt64: return by_op<int64_t>(call, st);
    default: throw TypeMismatch("device collective: unsupported dtype");
  }
}

}  // namespace plexus
