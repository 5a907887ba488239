// plexus._C.detect_host_topology(): this host as a plain dict, the shape that
// python/plexus/topology.py validates, merges across ranks and writes as JSON.
#include <pybind11/pybind11.h>

#include "topology/topology.h"

namespace py = pybind11;

namespace {

template <typename T>
py::list to_list(const std::vector<T>& v) {
  py::list out;
  for (const auto& x : v) out.append(x);
  return out;
}

py::dict host_dict(const plexus::HostTopology& t) {
  py::dict cpu;
  cpu["model"] = t.cpu_model;
  cpu["logical_cores"] = t.logical_cores;
  cpu["physical_cores"] = t.physical_cores;

  py::list numa, gpus, links, nvlinks, nics, ib;
  for (const auto& n : t.numa) {
    py::dict d;
    d["id"] = n.id;
    d["cpus"] = n.cpus;
    d["memory_mib"] = n.memory_mib;
    numa.append(d);
  }
  for (const auto& g : t.gpus) {
    py::dict d;
    d["index"] = g.index;
    d["pci_bus_id"] = g.pci_bus_id;
    d["name"] = g.name;
    d["memory_mib"] = g.memory_mib;
    d["numa_node"] = g.numa_node;
    gpus.append(d);
  }
  for (const auto& row : t.gpu_links) links.append(to_list(row));
  for (const auto& row : t.nvlinks) nvlinks.append(to_list(row));
  for (const auto& n : t.nics) {
    py::dict d;
    d["name"] = n.name;
    d["operstate"] = n.operstate;
    d["speed_mbps"] = n.speed_mbps;
    d["ipv4"] = n.ipv4;
    d["mtu"] = n.mtu;
    d["virtual"] = n.is_virtual;
    d["numa_node"] = n.numa_node;
    nics.append(d);
  }
  for (const auto& p : t.ib) {
    py::dict d;
    d["device"] = p.device;
    d["port"] = p.port;
    d["state"] = p.state;
    d["rate"] = p.rate;
    d["rate_gbps"] = p.rate_gbps;
    d["link_layer"] = p.link_layer;
    d["netdev"] = p.netdev;
    d["numa_node"] = p.numa_node;
    ib.append(d);
  }

  py::dict h;
  h["hostname"] = t.hostname;
  h["host_id"] = t.host_id;
  h["cpu"] = cpu;
  h["memory_mib"] = t.memory_mib;
  h["numa"] = numa;
  h["gpus"] = gpus;
  h["gpu_links"] = links;
  h["nvlinks"] = nvlinks;
  h["gpu_source"] = t.gpu_source;
  h["nics"] = nics;
  h["ib"] = ib;
  return h;
}

}  // namespace

void bind_topology(py::module_& m) {
  m.def(
      "detect_host_topology",
      [] {
        plexus::HostTopology t;
        {
          py::gil_scoped_release nogil;  // NVML init can take a second on big machines
          t = plexus::detect_host_topology();
        }
        return host_dict(t);
      },
      "This host's CPU, NUMA nodes, memory, GPUs (with link matrix), NICs and InfiniBand ports, as a dict.");
}
