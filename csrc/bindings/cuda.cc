// CUDA parts of plexus._C. They exist in every build, so that Python can ask instead of guess:
// without CUDA, cuda_runtime_available() is False and the kernels raise "built without CUDA".
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/types.h"
#ifdef PLEXUS_WITH_CUDA
#include "reduce/cuda_reduce.h"
#include "transport/cuda_ipc/cuda_ipc.h"
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
// ValueError for an unknown op, no sources or a wrong number of destinations.
void cuda_reduce_to(int op, int dtype, const std::vector<uintptr_t>& dsts, const std::vector<uintptr_t>& srcs,
                    size_t n, double post_scale, uintptr_t stream, int device) {
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
  if (dsts.empty() || dsts.size() > static_cast<size_t>(cuda::kMaxReduceDsts))
    throw InvalidArgument("_cuda_reduce: needs 1 to " + std::to_string(cuda::kMaxReduceDsts) + " destinations");
  std::vector<const void*> p;
  p.reserve(srcs.size());
  for (auto s : srcs) p.push_back(reinterpret_cast<const void*>(s));
  std::vector<void*> q;
  for (auto x : dsts) q.push_back(reinterpret_cast<void*>(x));
  py::gil_scoped_release nogil;
  cuda_ipc::DeviceGuard on(device);
  cuda::reduce_to(o, d, q.data(), static_cast<int>(q.size()), p.data(), static_cast<int>(p.size()), n, post_scale,
                  reinterpret_cast<void*>(stream));
#else
  (void)dsts, (void)n, (void)post_scale, (void)stream, (void)device;
#endif
}

#ifdef PLEXUS_WITH_CUDA
void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
uintptr_t as_int(const void* p) { return reinterpret_cast<uintptr_t>(p); }

void bind_ipc(py::module_& m) {
  using namespace cuda_ipc;
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("_cuda_ipc_export", [](int dev, uintptr_t ptr) {
    Exported e;
    {
      py::gil_scoped_release r;
      e = export_memory(dev, as_ptr(ptr));
    }
    return py::make_tuple(py::bytes(e.handle), e.offset);
  });
  m.def("_cuda_ipc_open", [](int dev, const std::string& h) { return as_int(open_memory(dev, h)); }, nogil);
  m.def("_cuda_ipc_close", [](int dev, uintptr_t base) { close_memory(dev, as_ptr(base)); }, nogil);
  m.def("_cuda_event_create", [](int dev, bool interprocess) {
    Event e;
    {
      py::gil_scoped_release r;
      e = create_event(dev, interprocess);
    }
    return py::make_tuple(as_int(e.event), py::bytes(e.handle));
  });
  m.def("_cuda_event_open", [](int dev, const std::string& h) { return as_int(open_event(dev, h)); }, nogil);
  m.def("_cuda_event_destroy", [](int dev, uintptr_t e) { destroy_event(dev, as_ptr(e)); }, nogil);
  m.def("_cuda_event_record", [](int dev, uintptr_t e, uintptr_t s) { record(dev, as_ptr(e), as_ptr(s)); }, nogil);
  m.def("_cuda_stream_wait", [](int dev, uintptr_t s, uintptr_t e) { stream_wait(dev, as_ptr(s), as_ptr(e)); }, nogil);
  m.def("_cuda_event_query", [](int dev, uintptr_t e) { return query(dev, as_ptr(e)); }, nogil);
  m.def("_cuda_event_synchronize", [](int dev, uintptr_t e) { synchronize_event(dev, as_ptr(e)); }, nogil);
  m.def("_cuda_memcpy", [](int dev, uintptr_t dst, uintptr_t src, size_t n, uintptr_t s) {
    copy(dev, as_ptr(dst), as_ptr(src), n, as_ptr(s));
  }, nogil);
  m.def("_cuda_device_synchronize", [](int dev) { synchronize_device(dev); }, nogil);
  m.def("_cuda_stream_capturing", [](int dev, uintptr_t s) { return capturing(dev, as_ptr(s)); }, nogil);
}
#else
void bind_ipc(py::module_& m) {
  for (const char* name : {"_cuda_ipc_export", "_cuda_ipc_open", "_cuda_ipc_close", "_cuda_event_create",
                           "_cuda_event_open", "_cuda_event_destroy", "_cuda_event_record", "_cuda_stream_wait",
                           "_cuda_event_query", "_cuda_event_synchronize", "_cuda_memcpy",
                           "_cuda_device_synchronize", "_cuda_stream_capturing"}) {
    std::string n = name;
    m.def(name, [n](py::args, py::kwargs) { no_cuda(n.c_str()); });
  }
}
#endif

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
  m.def("_cuda_reduce",
        [](int op, int dtype, uintptr_t dst, const std::vector<uintptr_t>& srcs, size_t n, double post_scale,
           uintptr_t stream) { cuda_reduce_to(op, dtype, {dst}, srcs, n, post_scale, stream, -1); },
        py::arg("op"), py::arg("dtype"), py::arg("dst"), py::arg("srcs"), py::arg("n"), py::arg("post_scale") = 1.0,
        py::arg("stream") = 0,
        "Test hook: run the CUDA reduction kernel on device addresses, enqueued on `stream` "
        "(a cudaStream_t as int; 0 = default stream) of the current device.");
  m.def("_cuda_reduce_to", &cuda_reduce_to, py::arg("op"), py::arg("dtype"), py::arg("dsts"), py::arg("srcs"),
        py::arg("n"), py::arg("post_scale"), py::arg("stream"), py::arg("device"),
        "The CUDA reduction into up to 8 destinations at once, on `device` (-1: the current one).");
  bind_ipc(m);
}
