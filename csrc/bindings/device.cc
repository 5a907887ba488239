// plexus._C.DeviceComm: the native device path of a group (csrc/core/device_comm.h). Pointers
// and streams travel as ints; every call releases the GIL (the emulated device runs the call
// on this thread and waits for its peers).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/types.h"
#include "core/device_comm.h"

namespace py = pybind11;
using namespace plexus;

namespace {

const void* in_ptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* out_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
// A list of addresses from Python as pointers (P: void or const void).
template <typename P>
std::vector<P*> pointers(const std::vector<uintptr_t>& addresses) {
  std::vector<P*> v;
  v.reserve(addresses.size());
  for (auto a : addresses) v.push_back(reinterpret_cast<P*>(a));
  return v;
}

DType dtype_of(int code) {
  if (code < 0 || code >= static_cast<int>(DType::kCount)) throw TypeMismatch("DeviceComm: unsupported dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

RedOp op_of(int code, DType dtype) {
  if (code < 0 || code >= static_cast<int>(RedOp::kNone)) throw InvalidArgument("DeviceComm: unknown reduction op code " + std::to_string(code));
  RedOp op = static_cast<RedOp>(code);
  std::string problem = op_dtype_problem(op, dtype);
  if (!problem.empty()) throw TypeMismatch("DeviceComm: " + problem);
  return op;
}

}  // namespace

void bind_device(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  py::class_<LaneWork, std::shared_ptr<LaneWork>>(m, "LaneWork",
                                                  "A point-to-point message of a DeviceComm, on its lane.")
      .def("done", &LaneWork::done, nogil)
      .def("wait", &LaneWork::wait, nogil)
      .def("stream_wait", [](LaneWork& w, uintptr_t s) { w.stream_wait(out_ptr(s)); }, py::arg("stream"), nogil);
  py::class_<DeviceComm>(m, "DeviceComm",
                         "The native device path of one group on one host: workspaces mapped once, "
                         "collectives as kernels that synchronise through signal pads.")
      .def(py::init<int, int, int, bool, size_t, double, std::vector<int>>(), py::arg("rank"), py::arg("world"),
           py::arg("device"), py::arg("emulated"), py::arg("scratch_bytes"), py::arg("timeout"), py::arg("names"))
      .def("handle", [](const DeviceComm& c) { return py::bytes(c.handle()); })
      .def("connect", [](DeviceComm& c, const std::vector<std::string>& h, int blocks) { c.connect(h, blocks); },
           py::arg("handles"), py::arg("blocks"), nogil)
      .def("seal", &DeviceComm::seal)
      .def("all_reduce", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int op, double scale, uintptr_t s) {
        DType d = dtype_of(dt);
        RedOp o = op_of(op, d);
        py::gil_scoped_release r;
        c.all_reduce(in_ptr(in), out_ptr(out), n, d, o, scale, out_ptr(s));
      })
      .def("reduce", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int op, double scale, int root,
                        uintptr_t s) {
        DType d = dtype_of(dt);
        RedOp o = op_of(op, d);
        py::gil_scoped_release r;
        c.reduce(in_ptr(in), out_ptr(out), n, d, o, scale, root, out_ptr(s));
      })
      .def("broadcast", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int root, uintptr_t s) {
        DType d = dtype_of(dt);
        py::gil_scoped_release r;
        c.broadcast(in_ptr(in), out_ptr(out), n, d, root, out_ptr(s));
      })
      .def("all_gather", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, uintptr_t s) {
        DType d = dtype_of(dt);
        py::gil_scoped_release r;
        c.all_gather(in_ptr(in), out_ptr(out), n, d, out_ptr(s));
      })
      .def("all_gather_list", [](DeviceComm& c, uintptr_t in, const std::vector<uintptr_t>& outs, size_t n, int dt,
                                 uintptr_t s) {
        DType d = dtype_of(dt);
        std::vector<void*> o = pointers<void>(outs);
        py::gil_scoped_release r;
        c.all_gather_list(in_ptr(in), o, n, d, out_ptr(s));
      })
      .def("reduce_scatter", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int op, double scale,
                                uintptr_t s) {
        DType d = dtype_of(dt);
        RedOp o = op_of(op, d);
        py::gil_scoped_release r;
        c.reduce_scatter(in_ptr(in), out_ptr(out), n, d, o, scale, out_ptr(s));
      })
      .def("gather", [](DeviceComm& c, uintptr_t in, const std::vector<uintptr_t>& outs, size_t n, int dt, int root,
                        uintptr_t s) {
        DType d = dtype_of(dt);
        std::vector<void*> o = pointers<void>(outs);
        py::gil_scoped_release r;
        c.gather(in_ptr(in), o, n, d, root, out_ptr(s));
      }, py::arg("inp"), py::arg("outs"), py::arg("count"), py::arg("dtype"), py::arg("root"), py::arg("stream"))
      .def("scatter", [](DeviceComm& c, const std::vector<uintptr_t>& ins, uintptr_t out, size_t n, int dt, int root,
                         uintptr_t s) {
        DType d = dtype_of(dt);
        std::vector<const void*> i = pointers<const void>(ins);
        py::gil_scoped_release r;
        c.scatter(i, out_ptr(out), n, d, root, out_ptr(s));
      }, py::arg("ins"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("root"), py::arg("stream"))
      .def("all_to_all", [](DeviceComm& c, const std::vector<uintptr_t>& ins, const std::vector<uint64_t>& sends,
                            const std::vector<uintptr_t>& outs, const std::vector<uint64_t>& receives,
                            int dt, uintptr_t s) {
        DType d = dtype_of(dt);
        std::vector<const void*> i = pointers<const void>(ins);
        std::vector<void*> o = pointers<void>(outs);
        py::gil_scoped_release r;
        c.all_to_all(i, sends, o, receives, d, out_ptr(s));
      }, py::arg("ins"), py::arg("sends"), py::arg("outs"), py::arg("receives"), py::arg("dtype"),
         py::arg("stream"))
      .def("send", [](DeviceComm& c, uintptr_t buf, size_t n, int dt, int peer, uintptr_t s) {
        DType d = dtype_of(dt);
        py::gil_scoped_release r;
        return c.send(in_ptr(buf), n, d, peer, out_ptr(s));
      }, py::arg("buf"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("stream"))
      .def("recv", [](DeviceComm& c, uintptr_t buf, size_t n, int dt, int peer, uintptr_t s) {
        DType d = dtype_of(dt);
        py::gil_scoped_release r;
        return c.recv(out_ptr(buf), n, d, peer, out_ptr(s));
      }, py::arg("buf"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("stream"))
      .def("messages_pending", &DeviceComm::messages_pending, nogil,
           "Whether a send or recv of this communicator has not finished.")
      .def_property_readonly("slot_bytes", &DeviceComm::slot_bytes,
                             "bytes of a message chunk (an inbox slot): a message's one launch goes round them")
      .def("add_window", [](DeviceComm& c, uintptr_t ptr, size_t bytes, const std::vector<uintptr_t>& peers) {
        return c.add_window(in_ptr(ptr), bytes, peers);
      }, py::arg("ptr"), py::arg("bytes"), py::arg("peers"))
      .def("remove_window", &DeviceComm::remove_window)
      .def("in_windows", [](const DeviceComm& c, uintptr_t in, uintptr_t out, size_t bytes) {
        return c.in_windows(in_ptr(in), in_ptr(out), bytes);
      }, "Whether all_reduce(in, out) of `bytes` reads and writes registered buffers in place.")
      .def("all_reduce_mapped", [](DeviceComm& c, uintptr_t in, uintptr_t out, size_t n, int dt, int op, double scale,
                                   const std::vector<uintptr_t>& peer_in, const std::vector<uintptr_t>& peer_out,
                                   uintptr_t s) {
        DType d = dtype_of(dt);
        RedOp o = op_of(op, d);
        py::gil_scoped_release r;
        c.all_reduce_mapped(in_ptr(in), out_ptr(out), n, d, o, scale, peer_in, peer_out, out_ptr(s));
      }, py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op"), py::arg("scale"),
         py::arg("peer_in"), py::arg("peer_out"), py::arg("stream"))
      .def_property("mapped_min", &DeviceComm::mapped_min, &DeviceComm::set_mapped_min,
                    "all_reduce bytes from which every rank's arrays are mapped per call (the group's)")
      .def_property_readonly("mapped_calls", &DeviceComm::mapped_calls,
                             "all_reduce calls that ran in place on arrays mapped for the call")
      .def("check", &DeviceComm::check, "Raises the first error the device reported, if any.")
      .def("abort", &DeviceComm::abort, "Makes every waiting kernel of this communicator give up.")
      .def("explain_all_reduce", &DeviceComm::explain_all_reduce)
      .def_property_readonly("scratch_bytes", &DeviceComm::scratch_bytes)
      .def_property_readonly("blocks", &DeviceComm::blocks)
      .def_property_readonly("direct_calls", &DeviceComm::direct_calls,
                             "all_reduce calls that read and wrote registered buffers in place");
}
