// plexus._C: the only place where Python meets the C++ core. Buffers cross as integer
// addresses; the Python layer checks arrays and keeps them alive while an op runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "algorithms/algorithm.h"
#include "base/error.h"
#include "base/log.h"
#include "bootstrap/auth.h"
#include "bootstrap/rendezvous.h"
#include "bootstrap/tcp_store.h"
#include "base/fault.h"
#include "core/collectives.h"
#include "core/flight_recorder.h"
#include "core/communicator.h"
#include "reduce/cpu_reduce.h"
#include "transport/host_memory.h"
#include "transport/transport.h"
#include "transport/ucx_info.h"
#include "tuner/cost_model.h"
#include "tuner/tuner.h"

namespace py = pybind11;
using namespace plexus;

void bind_topology(pybind11::module_& m);  // bindings/topology.cc
void bind_cuda(pybind11::module_& m);      // bindings/cuda.cc
void bind_device(pybind11::module_& m);    // bindings/device.cc

namespace {

// A Store implemented in Python (e.g. over torch.distributed's store): set(key, value: bytes),
// get(key, timeout_seconds) -> bytes raising TimeoutError, add(key, delta) -> int, and
// optionally local_address() -> str.
class PyStore : public Store {
 public:
  void set(const std::string& key, const std::string& value) override {
    py::gil_scoped_acquire gil;
    call("set", key, py::bytes(value));
  }
  std::string get(const std::string& key, Deadline deadline) override {
    py::gil_scoped_acquire gil;
    double left = std::chrono::duration<double>(deadline.at - Clock::now()).count();
    return call("get", key, left > 0 ? left : 0.0).cast<std::string>();
  }
  int64_t add(const std::string& key, int64_t delta) override {
    py::gil_scoped_acquire gil;
    return call("add", key, delta).cast<int64_t>();
  }
  std::string local_address() const override {
    py::gil_scoped_acquire gil;
    py::function f = py::get_override(static_cast<const Store*>(this), "local_address");
    return f ? f().cast<std::string>() : std::string();
  }

 private:
  template <typename... Args>
  py::object call(const char* name, Args&&... args) {
    py::function f = py::get_override(static_cast<const Store*>(this), name);
    if (!f) throw Error(std::string("the Python store does not implement ") + name + "()");
    try {
      return f(std::forward<Args>(args)...);
    } catch (py::error_already_set& e) {
      if (e.matches(PyExc_TimeoutError)) throw Timeout(std::string("store: ") + e.what());
      throw Error(std::string("store.") + name + "() failed: " + e.what());
    }
  }
};

py::dict shape_to_dict(const GroupShape& g) {
  py::dict d;
  d["ranks"] = g.ranks;
  d["hosts"] = g.hosts;
  d["local"] = g.local;
  d["uniform"] = g.uniform;
  d["shm"] = g.shm;
  d["cma"] = g.cma;
  d["ucx"] = g.ucx;
  return d;
}

GroupShape shape_from_dict(const py::dict& d) {
  GroupShape g;
  g.ranks = d["ranks"].cast<int>();
  g.hosts = d.contains("hosts") ? d["hosts"].cast<int>() : 1;
  g.local = d.contains("local") ? d["local"].cast<int>() : g.ranks / std::max(1, g.hosts);
  g.uniform = d.contains("uniform") ? d["uniform"].cast<bool>() : true;
  g.shm = d.contains("shm") ? d["shm"].cast<bool>() : true;
  g.cma = d.contains("cma") ? d["cma"].cast<bool>() : false;
  g.ucx = d.contains("ucx") ? d["ucx"].cast<bool>() : false;
  if (g.ranks < 1 || g.hosts < 1 || g.local < 1) throw InvalidArgument("shape: ranks, hosts and local must be >= 1");
  return g;
}

py::dict link_to_dict(const LinkCost& l) {
  py::dict d;
  d["alpha_us"] = l.alpha_s * 1e6;
  d["gbps"] = l.bytes_per_s / 1e9;
  return d;
}

py::dict model_to_dict(const CostModel& m) {
  py::dict d;
  d["shm"] = link_to_dict(m.shm);
  d["tcp"] = link_to_dict(m.local_tcp);
  d["network"] = link_to_dict(m.network);
  d["ucx"] = link_to_dict(m.ucx);
  return d;
}

CostModel model_from_dict(const py::dict& d) {
  CostModel m;
  auto read = [&](const char* key, LinkCost& l) {
    if (!d.contains(key)) return;
    py::dict x = d[key].cast<py::dict>();
    if (x.contains("alpha_us")) l.alpha_s = x["alpha_us"].cast<double>() * 1e-6;
    if (x.contains("gbps")) l.bytes_per_s = x["gbps"].cast<double>() * 1e9;
    if (!(l.alpha_s >= 0) || !(l.bytes_per_s > 0)) throw InvalidArgument(std::string("cost model: bad ") + key);
  };
  read("shm", m.shm);
  read("tcp", m.local_tcp);
  read("network", m.network);
  read("ucx", m.ucx);
  return m;
}

// [(algorithm, predicted seconds, runnable)] for one collective and size.
py::list predictions(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  py::list out;
  for (const auto& p : predict_all(kind, bytes, g, m))
    out.append(py::make_tuple(p.algorithm->name, p.seconds, p.runnable));
  return out;
}

const void* as_ptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* as_mut_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

DType to_dtype(int d) {
  if (d < 0 || d >= static_cast<int>(DType::kCount)) throw TypeMismatch("unsupported dtype code");
  return static_cast<DType>(d);
}
RedOp to_op(int o) {
  if (o < 0 || o >= static_cast<int>(RedOp::kNone)) throw InvalidArgument("unknown reduction op");
  return static_cast<RedOp>(o);
}

// A call's arguments as the core takes them (addresses as ints from Python).
CollArgs collective_args(const std::vector<uintptr_t>& ins, const std::vector<uintptr_t>& outs, size_t count,
                         int dtype, int op, double factor, int root, std::vector<size_t> in_counts,
                         std::vector<size_t> out_counts) {
  CollArgs a;
  a.input_counts = std::move(in_counts);
  a.output_counts = std::move(out_counts);
  a.inputs.reserve(ins.size());
  a.outputs.reserve(outs.size());
  for (auto p : ins) a.inputs.push_back(as_ptr(p));
  for (auto p : outs) a.outputs.push_back(as_mut_ptr(p));
  a.count = count;
  a.dtype = to_dtype(dtype);
  a.op = op < 0 ? RedOp::kNone : to_op(op);
  a.factor = factor;
  a.root = root;
  return a;
}

// Returns the op's Work, or nullptr (None) when a blocking op already finished successfully:
// the common case costs no Work object on the Python side.
std::shared_ptr<Work> submit(Communicator& c, CollKind kind, std::vector<uintptr_t> ins,
                             std::vector<uintptr_t> outs, size_t count, int dtype, int op,
                             double factor, int root, bool blocking,
                             std::vector<size_t> in_counts = {}, std::vector<size_t> out_counts = {}) {
  auto work = submit_collective(c, kind,
                                collective_args(ins, outs, count, dtype, op, factor, root, std::move(in_counts),
                                                std::move(out_counts)),
                                blocking);
  if (blocking && work->succeeded()) return nullptr;
  return work;
}

// A collective's kind by its core name ("all_reduce", "all_gather", ...).
CollKind kind_named(const std::string& name) {
  for (int k = 0; k < static_cast<int>(CollKind::kCount); ++k)
    if (name == coll_name(static_cast<CollKind>(k))) return static_cast<CollKind>(k);
  throw InvalidArgument("no collective is called " + name);
}

// A collective of device arrays through the peers' message ports (algorithms/port_flat.h).
std::shared_ptr<Work> submit_direct(Communicator& c, const std::string& kind, std::vector<uintptr_t> ins,
                                    std::vector<uintptr_t> outs, size_t count, int dtype, int op, double factor,
                                    int root, bool cuda, int device, uintptr_t scratch, size_t scratch_bytes,
                                    uintptr_t ready_event, bool blocking, std::vector<size_t> in_counts,
                                    std::vector<size_t> out_counts) {
  CollArgs a = collective_args(ins, outs, count, dtype, op, factor, root, std::move(in_counts), std::move(out_counts));
  PortPlace place;
  place.memory = cuda ? MemoryKind::kCuda : MemoryKind::kHost;
  place.device = device;
  place.scratch = as_mut_ptr(scratch);
  place.scratch_bytes = scratch_bytes;
  place.ready_event = as_mut_ptr(ready_event);
  auto work = submit_port_collective(c, kind_named(kind), std::move(a), place, blocking);
  if (blocking && work->succeeded()) return nullptr;
  return work;
}

// The DType of a numpy array plexus can use as it is (a built-in numpy type in native byte
// order), or nullopt: bfloat16 (ml_dtypes), user dtypes and the rest take the checked Python path.
std::optional<DType> plain_numpy_dtype(const py::dtype& dt) {
  if (dt.byteorder() != '=' && dt.byteorder() != '|') return std::nullopt;
  enum { kBool = 0, kByte = 1, kUByte = 2, kInt = 5, kLong = 7, kLongLong = 9, kFloat = 11, kDouble = 12,
         kHalf = 23 };  // NPY_TYPES numbers
  switch (dt.num()) {
    case kBool: return DType::kBool;
    case kByte: return DType::kInt8;
    case kUByte: return DType::kUInt8;
    case kInt:
    case kLong:
    case kLongLong:
      return dt.itemsize() == 4 ? std::optional<DType>(DType::kInt32)
             : dt.itemsize() == 8 ? std::optional<DType>(DType::kInt64) : std::nullopt;
    case kFloat: return DType::kFloat32;
    case kDouble: return DType::kFloat64;
    case kHalf: return DType::kFloat16;
    default: return std::nullopt;
  }
}

// A plain numpy array (C-contiguous, native dtype plexus knows) and its DType, or nullopt.
std::optional<DType> plain_array(const py::handle& obj, bool writable) {
  if (!py::isinstance<py::array>(obj)) return std::nullopt;
  auto arr = py::reinterpret_borrow<py::array>(obj);
  const int need = py::array::c_style | (writable ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0);
  if ((arr.flags() & need) != need) return std::nullopt;
  return plain_numpy_dtype(arr.dtype());
}

// The hot path of a blocking all-reduce of numpy arrays (small messages are all overhead): the
// checks of distributed.all_reduce done at C++ speed. False (nothing done) when the arrays or
// the op need the Python path, which checks everything again and names what is wrong.
bool all_reduce_ndarray(Communicator& c, const py::handle& input, const py::handle& output, int op) {
  const bool in_place = output.is_none();
  const auto dtype = plain_array(input, in_place);
  // PREMUL_SUM needs its factor: the Python path has it (or says it is missing).
  if (!dtype || op < 0 || op >= static_cast<int>(RedOp::kNone) || op == static_cast<int>(RedOp::kPremulSum) ||
      !op_dtype_problem(static_cast<RedOp>(op), *dtype).empty())
    return false;
  auto in = py::reinterpret_borrow<py::array>(input);
  void* src = const_cast<void*>(in.data());  // written only in place, where it is writable
  void* dst = src;
  const size_t count = static_cast<size_t>(in.size());
  if (!in_place) {
    if (plain_array(output, true) != dtype) return false;
    auto out = py::reinterpret_borrow<py::array>(output);
    dst = out.mutable_data();
    const size_t bytes = count * dtype_size(*dtype);
    const char *a = static_cast<char*>(src), *b = static_cast<char*>(dst);
    const bool overlap = bytes && a < b + bytes && b < a + bytes;
    if (static_cast<size_t>(out.size()) != count || (overlap && a != b)) return false;
  }
  std::shared_ptr<Work> work;
  {
    py::gil_scoped_release nogil;
    work = submit(c, CollKind::kAllReduce, {reinterpret_cast<uintptr_t>(src)}, {reinterpret_cast<uintptr_t>(dst)},
                  count, static_cast<int>(*dtype), op, 1.0, -1, true);
    if (work) work->wait(-1);  // raises the op's error
  }
  return true;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Plexus core (C++)";
#ifdef PLEXUS_VERSION
  m.attr("__version__") = PLEXUS_VERSION;
#endif
#ifdef PLEXUS_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif

  static py::exception<Error> plexus_error(m, "PlexusError", PyExc_RuntimeError);
  static py::exception<PeerError> peer_error(m, "PeerError", plexus_error.ptr());
  static py::exception<Timeout> timeout_error(m, "CollectiveTimeout", plexus_error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TypeMismatch& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const PeerError& e) {
      py::set_error(peer_error, e.what());
    } catch (const Timeout& e) {
      py::set_error(timeout_error, e.what());
    } catch (const Error& e) {
      py::set_error(plexus_error, e.what());
    }
  });

  py::list dtypes, ops;
  for (int i = 0; i < static_cast<int>(DType::kCount); ++i) dtypes.append(dtype_name(static_cast<DType>(i)));
  for (int i = 0; i < static_cast<int>(RedOp::kNone); ++i) ops.append(op_name(static_cast<RedOp>(i)));
  m.attr("DTYPES") = dtypes;  // index = dtype code
  m.attr("OPS") = ops;        // index = op code
  m.attr("DIRECT_TAG_LIMIT") = DirectMessages::kTagLimit;  // device messages between hosts: tags below it

  m.def("op_dtype_problem", [](int op, int dtype) { return op_dtype_problem(to_op(op), to_dtype(dtype)); },
        "Empty string if the op can reduce the dtype, else why not.");
  m.def("kernel_variant", &cpu::kernel_variant);
  // A numpy array's data address, without building __array_interface__ (much slower).
  m.def("array_address", [](const py::array& a) { return reinterpret_cast<uintptr_t>(a.data()); });
  m.def("set_log_rank", &set_log_rank);
  m.def("interface_ipv4", &interface_ipv4, "IPv4 address of a network interface, or ''.");
  m.def("job_authenticated", [] { return !job_token().empty(); },
        "Whether PLEXUS_AUTH_TOKEN or PLEXUS_AUTH_FILE gives this job a token (ValueError: unreadable file).");
  m.def("_hmac_sha256", [](const py::bytes& key, const py::bytes& message) {
    Mac mac = hmac_sha256(std::string(key), std::string(message));
    return py::bytes(reinterpret_cast<const char*>(mac.data()), mac.size());
  });
  m.def("_reduce",
        [](int op, int dtype, uintptr_t dst, std::vector<uintptr_t> srcs, size_t n, double post_scale) {
          std::vector<const void*> p;
          for (auto s : srcs) p.push_back(as_ptr(s));
          RedOp o = to_op(op);
          DType d = to_dtype(dtype);
          std::string problem = op_dtype_problem(o, d);
          if (!problem.empty()) throw TypeMismatch(problem);
          py::gil_scoped_release nogil;
          cpu::reduce(o, d, as_mut_ptr(dst), p.data(), static_cast<int>(p.size()), n, post_scale);
        },
        "Test hook: run the CPU reduction kernel on raw buffers.");
  m.def("store_barrier",
        [](std::shared_ptr<Store> store, const std::string& name, int rank, int size, double timeout_s) {
          store_barrier(*store, name, rank, size, Deadline::after_seconds(timeout_s));
        },
        py::arg("store"), py::arg("name"), py::arg("rank"), py::arg("size"), py::arg("timeout"),
        py::call_guard<py::gil_scoped_release>());
  m.def("default_cost_model", [] { return model_to_dict(cost_model_from_env()); },
        "The cost model from defaults, PLEXUS_TUNER_FILE and PLEXUS_TUNER.");
  m.def("predict",
        [](const std::string& collective, double nbytes, const py::dict& shape, const py::dict& model) {
          return predictions(parse_collective(collective), nbytes, shape_from_dict(shape), model_from_dict(model));
        },
        "Predicted time of every algorithm for a described group: [(name, seconds, runnable)].");
  m.def("cheapest",
        [](const std::string& collective, double nbytes, const py::dict& shape, const py::dict& model) {
          return std::string(cheapest(parse_collective(collective), nbytes, shape_from_dict(shape),
                                      model_from_dict(model)).name);
        });
  m.def("transports", [] {
    std::vector<std::pair<std::string, std::string>> rows;
    for (const auto& t : transport_table()) rows.emplace_back(t.name, t.summary);
    return rows;
  }, "The transports, in order of preference: [(name, summary)].");
  m.def("ucx_set_wheel_library", &ucx_set_wheel_library, py::arg("path"),
        "Where the libucx wheel's libucp.so.0 is: the last place the ucx transport looks.");
  m.def("ucx_status", [] {
    UcxInfo lib;
    {
      py::gil_scoped_release unlocked;
      lib = ucx_info();  // loads UCX: for `plexus info`, not on import
    }
    py::dict d;
    d["ok"] = lib.ok;
    d["problem"] = lib.problem;
    d["path"] = lib.path;
    d["version"] = lib.version;
    d["transports"] = lib.transports;
    d["rdma"] = lib.rdma;
    d["cuda_memory"] = lib.cuda_memory;
    return d;
  }, "Loads UCX if it was not: {ok, problem, path, version, transports, rdma, cuda_memory}.");
  m.def("_flight_dump", &flight_dump_json, py::call_guard<py::gil_scoped_release>(),
        "Every flight recorder of this process (the last calls of each communicator), as JSON.");
  m.def("_flight_dump_to_dir", &flight_dump_to_dir, py::arg("why"), py::call_guard<py::gil_scoped_release>(),
        "Writes _flight_dump() into PLEXUS_TRACE_DIR; returns the path.");
  m.def("_arm_fault", &arm_fault, py::arg("point"), py::arg("after") = 1,
        "Tests only: SIGKILL this process at its `after`-th arrival at fault point `point` (base/fault.h).");

  m.def("algorithms", [](const std::string& collective) {
    std::vector<std::string> names;
    for (const auto& a : algorithm_table())
      if (collective == coll_name(a.kind)) names.push_back(a.name);
    return names;
  });

  py::class_<Store, PyStore, std::shared_ptr<Store>>(m, "Store")
      .def(py::init<>())
      .def("set", [](Store& s, const std::string& k, py::bytes v) { s.set(k, std::string(v)); },
           py::call_guard<py::gil_scoped_release>())
      .def("get",
           [](Store& s, const std::string& k, double timeout_s) {
             std::string v;
             {
               py::gil_scoped_release nogil;
               v = s.get(k, Deadline::after_seconds(timeout_s));
             }
             return py::bytes(v);
           },
           py::arg("key"), py::arg("timeout") = 300.0)
      .def("add", &Store::add, py::call_guard<py::gil_scoped_release>());

  py::class_<TcpStoreClient, Store, std::shared_ptr<TcpStoreClient>>(m, "TcpStoreClient")
      .def(py::init<const std::string&, int, double>(), py::arg("host"), py::arg("port"),
           py::arg("timeout"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("local_address", &TcpStoreClient::local_address);

  // keep_alive: a store written in Python lives on only through its Python object, so whoever
  // holds a store keeps that object alive (PrefixStore -> base, Communicator -> store).
  py::class_<PrefixStore, Store, std::shared_ptr<PrefixStore>>(m, "PrefixStore")
      .def(py::init<std::shared_ptr<Store>, std::string>(), py::keep_alive<1, 2>());

  py::class_<TcpStoreServer, std::shared_ptr<TcpStoreServer>>(m, "TcpStoreServer")
      .def(py::init<const std::string&, int>(), py::arg("bind_ip"), py::arg("port"))
      .def_property_readonly("port", &TcpStoreServer::port);

  py::class_<Work, std::shared_ptr<Work>>(m, "Work")
      .def("wait",
           [](Work& w, std::optional<double> timeout) {
             py::gil_scoped_release nogil;
             return w.wait(timeout ? *timeout : -1.0);
           },
           py::arg("timeout") = py::none())
      .def("is_completed", &Work::is_completed)
      .def("failed", [](Work& w) { return static_cast<bool>(w.error()); })
      .def("rethrow", [](Work& w) {
        if (auto e = w.error()) std::rethrow_exception(e);
      })
      .def_property_readonly("what", &Work::what)
      .def_property_readonly("source", &Work::source);

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def(py::init<std::shared_ptr<Store>, int, int, double, std::vector<int>>(), py::arg("store"),
           py::arg("rank"), py::arg("size"), py::arg("timeout"), py::arg("global_ranks") = std::vector<int>{},
           py::keep_alive<1, 2>(), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("id", &Communicator::id)
      .def_property_readonly("listen_port", &Communicator::listen_port)
      .def_property_readonly("listen_ports", &Communicator::listen_ports)
      .def_property_readonly("timeout", &Communicator::timeout_s)
      .def_property_readonly("host_ids",
                             [](Communicator& c) {
                               std::vector<std::string> ids;
                               for (auto& e : c.endpoints()) ids.push_back(e.host_id);
                               return ids;
                             })
      .def("transport_to", &Communicator::transport_to, "Name of the transport that reaches a peer.")
      .def_property_readonly("shape", [](Communicator& c) { return shape_to_dict(c.shape()); })
      .def_property_readonly("cost_model", [](Communicator& c) { return model_to_dict(c.cost_model()); })
      .def("set_cost_model", [](Communicator& c, const py::dict& m) { c.set_cost_model(model_from_dict(m)); })
      .def("explain",
           [](Communicator& c, const std::string& collective, double nbytes) {
             CollKind kind = parse_collective(collective);
             std::string why;
             const Algorithm& a = choose_algorithm(kind, static_cast<size_t>(nbytes), c.shape(), c.cost_model(),
                                                  c.internal(), &why);
             return py::make_tuple(a.name, why, predictions(kind, nbytes, c.shape(), c.cost_model()));
           },
           "(chosen algorithm, why, [(name, predicted seconds, runnable)]) for a call on this group.")
      .def_property_readonly("local_size", [](Communicator& c) { return c.host_memory() ? c.host_memory()->local_size() : 1; })
      .def("abort", &Communicator::abort, py::call_guard<py::gil_scoped_release>())
      .def("check_not_forked", &Communicator::check_not_forked)
      // Collectives. `blocking=True` means the caller waits at once: the op may then run on
      // the calling thread. The GIL is released throughout.
      .def("all_reduce",
           [](Communicator& c, uintptr_t in, uintptr_t out, size_t count, int dtype, int op, double factor,
              bool blocking) {
             return submit(c, CollKind::kAllReduce, {in}, {out}, count, dtype, op, factor, -1, blocking);
           },
           py::arg("input"), py::arg("output"), py::arg("count"), py::arg("dtype"), py::arg("op"),
           py::arg("factor") = 1.0, py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>())
      .def("all_reduce_ndarray", &all_reduce_ndarray, py::arg("input"), py::arg("output"), py::arg("op"),
           "Blocking all-reduce of plain numpy arrays (output None: in place); False when it needs "
           "the checked path.")
      .def("all_gather",
           [](Communicator& c, uintptr_t in, std::vector<uintptr_t> outs, size_t count, int dtype, bool blocking) {
             return submit(c, CollKind::kAllGather, {in}, std::move(outs), count, dtype, -1, 1.0, -1, blocking);
           },
           py::arg("input"), py::arg("outputs"), py::arg("count"), py::arg("dtype"), py::arg("blocking") = false,
           py::call_guard<py::gil_scoped_release>())
      .def("reduce_scatter",
           [](Communicator& c, std::vector<uintptr_t> ins, uintptr_t out, size_t count, int dtype, int op,
              double factor, bool blocking) {
             return submit(c, CollKind::kReduceScatter, std::move(ins), {out}, count, dtype, op, factor, -1,
                           blocking);
           },
           py::arg("inputs"), py::arg("output"), py::arg("count"), py::arg("dtype"), py::arg("op"),
           py::arg("factor") = 1.0, py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>())
      .def("broadcast",
           [](Communicator& c, uintptr_t buf, size_t count, int dtype, int root, bool blocking) {
             return submit(c, CollKind::kBroadcast, {buf}, {buf}, count, dtype, -1, 1.0, root, blocking);
           },
           py::arg("buffer"), py::arg("count"), py::arg("dtype"), py::arg("root"), py::arg("blocking") = false,
           py::call_guard<py::gil_scoped_release>())
      .def("reduce",
           [](Communicator& c, uintptr_t in, uintptr_t out, size_t count, int dtype, int op, double factor,
              int root, bool blocking) {
             return submit(c, CollKind::kReduce, {in}, {out}, count, dtype, op, factor, root, blocking);
           },
           py::arg("input"), py::arg("output"), py::arg("count"), py::arg("dtype"), py::arg("op"),
           py::arg("factor"), py::arg("root"), py::arg("blocking") = false,
           py::call_guard<py::gil_scoped_release>())
      .def("gather",
           [](Communicator& c, uintptr_t in, std::vector<uintptr_t> outs, size_t count, int dtype, int root,
              bool blocking) {
             // Non-roots pass no outputs; the core wants one per rank (unused there).
             if (c.rank() != root) outs.assign(static_cast<size_t>(c.size()), 0);
             return submit(c, CollKind::kGather, {in}, std::move(outs), count, dtype, -1, 1.0, root, blocking);
           },
           py::arg("input"), py::arg("outputs"), py::arg("count"), py::arg("dtype"), py::arg("root"),
           py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>())
      .def("scatter",
           [](Communicator& c, std::vector<uintptr_t> ins, uintptr_t out, size_t count, int dtype, int root,
              bool blocking) {
             if (c.rank() != root) ins.assign(static_cast<size_t>(c.size()), 0);
             return submit(c, CollKind::kScatter, std::move(ins), {out}, count, dtype, -1, 1.0, root, blocking);
           },
           py::arg("inputs"), py::arg("output"), py::arg("count"), py::arg("dtype"), py::arg("root"),
           py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>())
      .def("all_to_all",
           [](Communicator& c, std::vector<uintptr_t> ins, std::vector<size_t> in_counts, std::vector<uintptr_t> outs,
              std::vector<size_t> out_counts, int dtype, bool blocking) {
             return submit(c, CollKind::kAllToAll, std::move(ins), std::move(outs), 0, dtype, -1, 1.0, -1, blocking,
                           std::move(in_counts), std::move(out_counts));
           },
           py::arg("inputs"), py::arg("input_counts"), py::arg("outputs"), py::arg("output_counts"),
           py::arg("dtype"), py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>())
      .def("send",
           [](Communicator& c, uintptr_t buf, size_t count, int dtype, int peer, int tag) {
             if (peer < 0 || peer >= c.size() || peer == c.rank())
               throw InvalidArgument("send on " + c.name_of(c.rank()) + ": cannot send to group rank " +
                                     std::to_string(peer));
             DType d = to_dtype(dtype);
             return c.p2p().send(peer, as_ptr(buf), count * dtype_size(d), d, tag);
           },
           py::arg("buffer"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("tag"),
           py::call_guard<py::gil_scoped_release>())
      .def("recv",
           [](Communicator& c, uintptr_t buf, size_t count, int dtype, int peer, int tag) {
             if (peer != kAnySource && (peer < 0 || peer >= c.size() || peer == c.rank()))
               throw InvalidArgument("recv on " + c.name_of(c.rank()) + ": cannot receive from group rank " +
                                     std::to_string(peer));
             DType d = to_dtype(dtype);
             return c.p2p().recv(peer, as_mut_ptr(buf), count * dtype_size(d), d, tag);
           },
           py::arg("buffer"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("tag"),
           py::call_guard<py::gil_scoped_release>())
      .def("direct_reaches",
           [](Communicator& c, int peer, bool cuda) {
             return c.direct().reaches(peer, cuda ? MemoryKind::kCuda : MemoryKind::kHost);
           },
           py::arg("peer"), py::arg("cuda"),
           "Whether device messages to `peer` go straight through its transport's message port (UCX).")
      .def("send_direct",
           [](Communicator& c, uintptr_t buf, size_t count, int dtype, int peer, int tag, bool cuda) {
             DType d = to_dtype(dtype);
             return c.direct().send(peer, as_ptr(buf), count * dtype_size(d), d, tag,
                                    cuda ? MemoryKind::kCuda : MemoryKind::kHost);
           },
           py::arg("buffer"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("tag"), py::arg("cuda"),
           py::call_guard<py::gil_scoped_release>())
      .def("recv_direct",
           [](Communicator& c, uintptr_t buf, size_t count, int dtype, int peer, int tag, bool cuda) {
             DType d = to_dtype(dtype);
             return c.direct().recv(peer, as_mut_ptr(buf), count * dtype_size(d), d, tag,
                                    cuda ? MemoryKind::kCuda : MemoryKind::kHost);
           },
           py::arg("buffer"), py::arg("count"), py::arg("dtype"), py::arg("peer"), py::arg("tag"), py::arg("cuda"),
           py::call_guard<py::gil_scoped_release>())
      .def("collective_direct", &submit_direct, py::arg("kind"), py::arg("inputs"), py::arg("outputs"),
           py::arg("count"), py::arg("dtype"), py::arg("op"), py::arg("factor"), py::arg("root"), py::arg("cuda"),
           py::arg("device"), py::arg("scratch"), py::arg("scratch_bytes"), py::arg("ready_event"), py::arg("blocking"),
           py::arg("input_counts") = std::vector<size_t>{}, py::arg("output_counts") = std::vector<size_t>{},
           py::call_guard<py::gil_scoped_release>(),
           "A collective of device arrays between hosts straight through the peers' message ports (UCX); "
           "`scratch`: direct_scratch_bytes() of working memory beside the arrays; `ready_event`: a CUDA event "
           "on the caller's stream that the op waits for (0: the arrays are ready).")
      .def("direct_scratch_bytes",
           [](const Communicator& c, const std::string& kind, size_t count, int dtype, int root) {
             return port_flat_scratch_bytes(kind_named(kind), count, to_dtype(dtype), c.size(), c.rank(), root);
           },
           py::arg("kind"), py::arg("count"), py::arg("dtype"), py::arg("root"))
      .def("barrier",
           [](Communicator& c, bool blocking) {
             return submit(c, CollKind::kBarrier, {}, {}, 0, static_cast<int>(DType::kUInt8), -1, 1.0, -1,
                           blocking);
           },
           py::arg("blocking") = false, py::call_guard<py::gil_scoped_release>());
  bind_topology(m);
  bind_cuda(m);
  bind_device(m);
}
