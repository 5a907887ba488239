// CUDA reduction kernels: dst = op(srcs...) for every dtype x op of cpu::reduce, bit for bit.
// One templated kernel per (storage type, op): 16-byte vector loads/stores over the part where
// every pointer shares one alignment, scalar code for the few elements around it (or for all of
// them when the pointers' alignments differ), grid-stride so any size fits one launch.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "base/error.h"
#include "reduce/cuda_reduce.h"
#include "reduce/cuda/elementwise.cuh"

namespace plexus {
namespace cuda {
namespace {

using namespace elementwise;

constexpr int kParamSrcs = 64;  // source pointers passed by value; more go through device memory
constexpr int kChunk = 4;       // sources loaded together, so their loads are in flight at once
constexpr int kThreads = 256;
constexpr int kMaxDsts = kMaxReduceDsts;
constexpr int kMaxDevices = 64;

template <typename T>
struct Srcs {
  const T* p[kParamSrcs];
  const T* const* more;  // all sources, in device memory, when there are more than kParamSrcs
  __device__ const T* operator[](int j) const { return j < kParamSrcs ? p[j] : more[j]; }
};

// Where the result goes: every destination gets the same values (CUDA IPC all-reduce writes
// each peer's output from one read of the sources).
template <typename T>
struct Dsts {
  T* p[kMaxDsts];
  int n;
};

// Vectors [0, nvec) start at element `head`; the scalars are [0, head) and [head + nvec*V, n).
template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(Dsts<T> dst, Srcs<T> srcs, int nsrcs, size_t head, size_t nvec, size_t n, double post_scale) {
  constexpr int V = 16 / sizeof(T);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;

  for (size_t v = tid; v < nvec; v += stride) {
    const size_t off = head + v * V;
    const Vec<T> out = reduce_vector<T, Op, kChunk>(srcs, nsrcs, off, post_scale);
    for (int d = 0; d < dst.n; ++d) *reinterpret_cast<uint4*>(dst.p[d] + off) = out.raw;
  }

  const size_t tail = head + nvec * V;
  const size_t nscalar = head + (n - tail);
  for (size_t i = tid; i < nscalar; i += stride) {
    const size_t idx = i < head ? i : tail + (i - head);
    const T r = reduce_scalar<T, Op>(srcs, nsrcs, idx, post_scale);
    for (int d = 0; d < dst.n; ++d) dst.p[d][idx] = r;
  }
}

std::string cuda_error(const char* what, cudaError_t e) {
  cudaGetLastError();  // clear it, so that it does not show up in a later check
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cuda_error(what, e));
}

// Blocks that keep every SM busy (the grid-stride loop does the rest).
template <typename K>
unsigned max_blocks(K kernel) {
  static const int per_sm = [&] {
    int b = 0;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kernel, kThreads, 0) == cudaSuccess && b > 0 ? b : 4;
  }();
  static std::atomic<int> sms[kMaxDevices];
  int dev = 0;
  check(cudaGetDevice(&dev), "cuda::reduce: cudaGetDevice");
  int n = dev < kMaxDevices ? sms[dev].load(std::memory_order_relaxed) : 0;
  if (n <= 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cuda::reduce: SM count");
    if (dev < kMaxDevices) sms[dev].store(n, std::memory_order_relaxed);
  }
  return static_cast<unsigned>(n * per_sm);
}

template <typename T, typename Op>
void launch(void* const* dsts_v, int ndsts, const void* const* srcs_v, int nsrcs, size_t n, double post_scale,
            cudaStream_t stream) {
  constexpr size_t V = 16 / sizeof(T);
  Dsts<T> dst{};
  dst.n = ndsts;
  for (int d = 0; d < ndsts; ++d) dst.p[d] = static_cast<T*>(dsts_v[d]);
  // Vectorise only when every pointer sits at the same offset within 16 bytes.
  const uintptr_t mis = reinterpret_cast<uintptr_t>(dst.p[0]) % 16;
  bool same = true;
  for (int d = 1; d < ndsts; ++d) same = same && reinterpret_cast<uintptr_t>(dst.p[d]) % 16 == mis;
  for (int j = 0; j < nsrcs; ++j) same = same && reinterpret_cast<uintptr_t>(srcs_v[j]) % 16 == mis;
  size_t head = 0, nvec = 0;
  if (same) {
    head = std::min(n, mis ? (16 - mis) / sizeof(T) : size_t{0});
    nvec = (n - head) / V;
  }
  const size_t work = std::max(nvec, n - nvec * V);
  const size_t want = (work + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(std::min<size_t>(want, max_blocks(reduce_kernel<T, Op>)));

  Srcs<T> s{};
  for (int j = 0; j < nsrcs && j < kParamSrcs; ++j) s.p[j] = static_cast<const T*>(srcs_v[j]);
  void* more = nullptr;
  if (nsrcs > kParamSrcs) {
    // Rare (a reduction over more than 64 inputs): the pointer list goes to device memory, freed
    // in stream order. A pageable source is staged before cudaMemcpyAsync returns.
    const size_t bytes = sizeof(void*) * static_cast<size_t>(nsrcs);
    check(cudaMallocAsync(&more, bytes, stream), "cuda::reduce: cudaMallocAsync");
    check(cudaMemcpyAsync(more, srcs_v, bytes, cudaMemcpyHostToDevice, stream), "cuda::reduce: cudaMemcpyAsync");
    s.more = static_cast<const T* const*>(more);
  }
  reduce_kernel<T, Op><<<grid, kThreads, 0, stream>>>(dst, s, nsrcs, head, nvec, n, post_scale);
  cudaError_t launched = cudaGetLastError();
  if (more) cudaFreeAsync(more, stream);
  check(launched, "cuda::reduce: kernel launch");
}

template <typename T>
void dispatch(RedOp op, void* const* dst, int nd, const void* const* srcs, int nsrcs, size_t n, double sc,
              cudaStream_t st) {
  switch (op) {
    case RedOp::kSum: case RedOp::kAvg: case RedOp::kPremulSum:
      return launch<T, OpSum>(dst, nd, srcs, nsrcs, n, sc, st);
    case RedOp::kProduct: return launch<T, OpProd>(dst, nd, srcs, nsrcs, n, 1.0, st);
    case RedOp::kMin: return launch<T, OpMin>(dst, nd, srcs, nsrcs, n, 1.0, st);
    case RedOp::kMax: return launch<T, OpMax>(dst, nd, srcs, nsrcs, n, 1.0, st);
    default: throw InvalidArgument(std::string("cuda::reduce: no kernel for op ") + op_name(op));
  }
}

// Bitwise ops give the same bytes whatever the integer width: one set of byte kernels serves
// every integer dtype and bool. bool is stored as 0/1 bytes, so for it SUM and MAX are OR,
// PRODUCT and MIN are AND (as on the CPU).
bool dispatch_bytes(RedOp op, DType dtype, void* const* dst, int nd, const void* const* srcs, int nsrcs, size_t n,
                    cudaStream_t st) {
  if (dtype == DType::kBool) {
    if (op == RedOp::kSum || op == RedOp::kMax) op = RedOp::kBor;
    if (op == RedOp::kProduct || op == RedOp::kMin) op = RedOp::kBand;
  }
  const size_t bytes = n * dtype_size(dtype);
  switch (op) {
    case RedOp::kBand: launch<uint8_t, OpBand>(dst, nd, srcs, nsrcs, bytes, 1.0, st); return true;
    case RedOp::kBor: launch<uint8_t, OpBor>(dst, nd, srcs, nsrcs, bytes, 1.0, st); return true;
    case RedOp::kBxor: launch<uint8_t, OpBxor>(dst, nd, srcs, nsrcs, bytes, 1.0, st); return true;
    default: return false;
  }
}

}  // namespace

bool runtime_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cuda_error("no usable CUDA driver or device", e);
    return false;
  }
  if (n == 0) {
    if (why) *why = "the CUDA driver reports no device";
    return false;
  }
  return true;
}

int runtime_version_built() { return CUDART_VERSION; }

void reduce(RedOp op, DType dtype, void* dst, const void* const* srcs, int nsrcs, size_t n,
            double post_scale, void* stream) {
  reduce_to(op, dtype, &dst, 1, srcs, nsrcs, n, post_scale, stream);
}

void reduce_to(RedOp op, DType dtype, void* const* dsts, int ndsts, const void* const* srcs, int nsrcs, size_t n,
               double post_scale, void* stream) {
  std::string problem = op_dtype_problem(op, dtype);
  if (!problem.empty()) throw TypeMismatch(problem);
  if (nsrcs < 1) throw InvalidArgument("cuda::reduce needs at least one source");
  if (ndsts < 1 || ndsts > kMaxDsts)
    throw InvalidArgument("cuda::reduce needs 1 to " + std::to_string(kMaxDsts) + " destinations, got " + std::to_string(ndsts));
  if (n == 0) return;
  // A misaligned element access is a sticky error that ruins the CUDA context: refuse it here.
  const size_t es = dtype_size(dtype);
  auto aligned = [es](const void* p) { return p && reinterpret_cast<uintptr_t>(p) % es == 0; };
  for (int d = 0; d < ndsts; ++d)
    if (!aligned(dsts[d]))
      throw InvalidArgument("cuda::reduce: destination " + std::to_string(d) + " is null or not aligned to " + dtype_name(dtype));
  for (int j = 0; j < nsrcs; ++j)
    if (!aligned(srcs[j]))
      throw InvalidArgument("cuda::reduce: source " + std::to_string(j) + " is null or not aligned to " + dtype_name(dtype));
  std::string why;
  if (!runtime_available(&why)) throw Error("cuda::reduce: CUDA runtime not available: " + why);

  auto st = static_cast<cudaStream_t>(stream);
  if (dispatch_bytes(op, dtype, dsts, ndsts, srcs, nsrcs, n, st)) return;
  switch (dtype) {
    case DType::kFloat16: return dispatch<Half>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kBFloat16: return dispatch<BF16>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kFloat32: return dispatch<float>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kFloat64: return dispatch<double>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kInt8: return dispatch<int8_t>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kUInt8: return dispatch<uint8_t>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kInt32: return dispatch<int32_t>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    case DType::kInt64: return dispatch<int64_t>(op, dsts, ndsts, srcs, nsrcs, n, post_scale, st);
    default: throw TypeMismatch("cuda::reduce: unsupported dtype");
  }
}

}  // namespace cuda
}  // namespace plexus
