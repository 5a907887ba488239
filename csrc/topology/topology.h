// What this host looks like: CPU, NUMA, memory, GPUs and their links, NICs and InfiniBand
// ports. Read from /proc, /sys and (when the driver is installed) NVML or the CUDA driver,
// both loaded at run time so the library neither links nor needs them. Every field degrades
// to empty/0 when its source is missing; the tuner treats 0 as "unknown".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace plexus {

struct NumaNode {
  int id = 0;
  std::string cpus;        // kernel cpulist syntax, e.g. "0-27,56-83"
  int64_t memory_mib = 0;
};

struct GpuInfo {
  int index = 0;           // NVML (PCI) order, not CUDA_VISIBLE_DEVICES order
  std::string pci_bus_id;  // "0000:18:00.0", lower case, as in /sys/bus/pci/devices
  std::string name;
  int64_t memory_mib = 0;
  int numa_node = -1;      // -1: unknown
};

struct NetInterface {
  std::string name;
  std::string operstate;   // "up", "down", "unknown", ...
  int64_t speed_mbps = 0;  // 0: not reported (virtio, down links)
  std::string ipv4;
  int mtu = 0;
  bool is_virtual = false; // no backing device (veth, bridge, ifb, ...)
  int numa_node = -1;
};

struct IbPort {
  std::string device;      // "mlx5_0"
  int port = 0;
  std::string state;       // "ACTIVE", "DOWN", ...
  std::string rate;        // as the kernel says it: "400 Gb/sec (4X NDR)"
  double rate_gbps = 0;
  std::string link_layer;  // "InfiniBand" or "Ethernet" (RoCE)
  std::string netdev;      // the matching network interface, if any
  int numa_node = -1;
};

struct HostTopology {
  std::string hostname;
  std::string host_id;     // same value the bootstrap uses to group ranks by host
  std::string cpu_model;
  int logical_cores = 0;
  int physical_cores = 0;
  int64_t memory_mib = 0;
  std::vector<NumaNode> numa;
  std::vector<GpuInfo> gpus;
  // gpu_links[a][b]: "self", "nvlink", "p2p" or "pcie"; nvlinks[a][b]: NVLink count (0 if none).
  std::vector<std::vector<std::string>> gpu_links;
  std::vector<std::vector<int>> nvlinks;
  std::string gpu_source;  // "nvml", "cuda" or "" (no driver)
  std::vector<NetInterface> nics;
  std::vector<IbPort> ib;
};

// Never throws: a part that cannot be read is left empty.
HostTopology detect_host_topology();

// Parts, exposed for tests and for callers that need only one of them.
void detect_cpu_and_memory(HostTopology& t);
void detect_gpus(HostTopology& t);  // topology/gpu.cc
void detect_network(HostTopology& t);
// "400 Gb/sec (4X NDR)" -> 400; 0 when unparsable.
double parse_ib_rate_gbps(const std::string& rate);
// First line of a (sysfs/proc) file, trimmed; "" when it cannot be read.
std::string read_first_line(const std::string& path);
// A sysfs numa_node file as an int; -1 when missing.
int read_numa_node(const std::string& path);

}  // namespace plexus
