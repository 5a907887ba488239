// CUDA parts of plexus._C. They exist in every build, so that Python can ask instead of guess:
// without CUDA, cuda_runtime_available() is False and the kernels raise "built without CUDA".
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/types.h"
#ifdef PLEXUS_WITH_CUDA
#include "reduce/cuda_reduce.h"
#endif

#ifndef PLEXUS_CUDA_MODE
#define PLEXUS_CUDA_MODE "unknown"
#endif
#ifndef PLEXUS_NVCC_PATH
#define PLEXUS_NVCC_PATH ""
#endif
#ifndef PLEXUS_CUDA_ARCHS
#define PLEXUS_CUDA_ARCHS ""
#endif

namespace py = pybind11;
using namespace plexus;

namespace {

#ifdef PLEXUS_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) + ": plexus was built without CUDA (no nvcc at build time, or PLEXUS_CUDA=OFF)");
}

// Checked like _C._reduce: TypeError for a bad dtype or an op the dtype cannot take,
// ValueError for an unknown op or no sources.
void cuda_reduce(int op, int dtype, uintptr_t dst, const std::vector<uintptr_t>& srcs, size_t n,
                 double post_scale, uintptr_t stream) {
  if (!kWithCuda) no_cuda("_cuda_reduce");
  if (op < 0 || op >= static_cast<int>(RedOp::kNone)) throw InvalidArgument("_cuda_reduce: unknown reduction op code " + std::to_string(op));
  if (dtype < 0 || dtype >= static_cast<int>(DType::kCount)) throw TypeMismatch("_cuda_reduce: unsupported dtype code " + std::to_string(dtype));
  RedOp o = static_cast<RedOp>(op);
  DType d = static_cast<DType>(dtype);
  std::string problem = op_dtype_problem(o, d);
  if (!problem.empty()) throw TypeMismatch("_cuda_reduce: " + problem);
  if (srcs.empty()) throw InvalidArgument("_cuda_reduce: needs at least one source");
  if (srcs.size() > 1u << 20) throw InvalidArgument("_cuda_reduce: too many sources");
#ifdef PLEXUS_WITH_CUDA
  std::vector<const void*> p;
  p.reserve(srcs.size());
  for (auto s : srcs) p.push_back(reinterpret_cast<const void*>(s));
  py::gil_scoped_release nogil;
  cuda::reduce(o, d, reinterpret_cast<void*>(dst), p.data(), static_cast<int>(p.size()), n, post_scale,
               reinterpret_cast<void*>(stream));
#endif
}

std::string runtime_status() {
#ifdef PLEXUS_WITH_CUDA
  std::string why;
  return cuda::runtime_available(&why) ? std::string("ok") : why;
#else
  return "plexus was built without CUDA";
#endif
}

py::dict build_info() {
  py::dict d;
  d["with_cuda"] = kWithCuda;
  d["mode"] = PLEXUS_CUDA_MODE;       // PLEXUS_CUDA at configure time: AUTO, ON or OFF
  d["nvcc"] = PLEXUS_NVCC_PATH;       // the CUDA compiler CMake found ("" when none)
  d["architectures"] = PLEXUS_CUDA_ARCHS;
#ifdef PLEXUS_WITH_CUDA
  d["cudart_version"] = cuda::runtime_version_built();
#else
  d["cudart_version"] = 0;
#endif
  return d;
}

}  // namespace

void bind_cuda(py::module_& m) {
  m.def("cuda_runtime_available", [] { return runtime_status() == "ok"; },
        "True when this build has CUDA and a CUDA driver with at least one device is present.");
  m.def("_cuda_runtime_status", &runtime_status, "'ok', or why CUDA cannot be used here.");
  m.def("_cuda_build_info", &build_info, "How the CUDA part of this module was built.");
  m.def("_cuda_reduce", &cuda_reduce, py::arg("op"), py::arg("dtype"), py::arg("dst"), py::arg("srcs"),
        py::arg("n"), py::arg("post_scale") = 1.0, py::arg("stream") = 0,
        "Test hook: run the CUDA reduction kernel on device addresses, enqueued on `stream` "
        "(a cudaStream_t as int; 0 = default stream) of the current device.");
}
