// Host detection from /proc and /sys: CPU, memory, NUMA nodes, network interfaces, InfiniBand.
// GPUs live in gpu.cc. Nothing here throws: a missing file leaves its field empty.
#include "topology/topology.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "base/log.h"
#include "bootstrap/rendezvous.h"

namespace plexus {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// Entries of a directory (no "." / ".."), sorted; empty when it does not exist.
std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> out;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// "node12" with prefix "node" -> 12; -1 when the rest is not all digits.
int numbered(const std::string& name, const std::string& prefix) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::string rest = name.substr(prefix.size());
  if (rest.find_first_not_of("0123456789") != std::string::npos || rest.size() > 9) return -1;
  return std::atoi(rest.c_str());
}

int64_t to_int(const std::string& s, int64_t fallback = 0) {
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  return end == s.c_str() ? fallback : static_cast<int64_t>(v);
}

// The value in kB after `key` in a meminfo-style file, in MiB; 0 when absent.
int64_t meminfo_mib(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    size_t at = line.find(key);
    if (at != std::string::npos) return to_int(line.substr(at + key.size())) / 1024;
  }
  return 0;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, fallback;
  while (std::getline(f, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
    if (key == "model name" && !value.empty()) return value;
    // Arm kernels have no "model name"; some give "Model" or "Hardware" instead.
    if ((key == "Model" || key == "Hardware") && fallback.empty()) fallback = value;
  }
  return fallback;
}

// Distinct (package, core) pairs of the online CPUs; hyperthreads share a pair.
int physical_cores() {
  std::set<std::pair<int64_t, int64_t>> cores;
  for (const auto& n : list_dir("/sys/devices/system/cpu")) {
    if (numbered(n, "cpu") < 0) continue;
    std::string topo = "/sys/devices/system/cpu/" + n + "/topology/";
    std::string core = read_first_line(topo + "core_id");
    if (core.empty()) continue;  // offline CPUs have no topology
    cores.insert({to_int(read_first_line(topo + "physical_package_id")), to_int(core)});
  }
  return static_cast<int>(cores.size());
}

std::map<std::string, std::string> ipv4_by_interface() {
  std::map<std::string, std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || out.count(a->ifa_name)) continue;
    char buf[INET_ADDRSTRLEN] = {0};
    auto* sin = reinterpret_cast<sockaddr_in*>(a->ifa_addr);
    if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf))) out[a->ifa_name] = buf;
  }
  freeifaddrs(list);
  return out;
}

bool is_virtual_path(const std::string& path) {
  char resolved[PATH_MAX];
  if (!realpath(path.c_str(), resolved)) return false;
  return std::string(resolved).rfind("/sys/devices/virtual/", 0) == 0;
}

template <typename F>
void guarded(const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    PLEXUS_WARN("topology: detecting " << what << " failed: " << e.what());
  } catch (...) {
    PLEXUS_WARN("topology: detecting " << what << " failed");
  }
}

}  // namespace

std::string read_first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  if (!f || !std::getline(f, line)) return "";
  return trim(line);
}

int read_numa_node(const std::string& path) {
  std::string s = read_first_line(path);
  return s.empty() ? -1 : static_cast<int>(to_int(s, -1));
}

double parse_ib_rate_gbps(const std::string& rate) {
  std::istringstream in(rate);
  double v = 0;
  std::string unit;
  if (!(in >> v) || v < 0) return 0;
  in >> unit;
  if (unit.rfind("Mb", 0) == 0) return v / 1000;  // never seen in practice, but cheap to honour
  return v;
}

void detect_cpu_and_memory(HostTopology& t) {
  t.cpu_model = cpu_model();
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  t.logical_cores = online > 0 ? static_cast<int>(online) : 0;
  t.physical_cores = physical_cores();
  if (t.physical_cores == 0) t.physical_cores = t.logical_cores;

  t.memory_mib = meminfo_mib("/proc/meminfo", "MemTotal:");
  struct sysinfo si;
  if (t.memory_mib == 0 && sysinfo(&si) == 0)
    t.memory_mib = static_cast<int64_t>(si.totalram) * si.mem_unit / (1024 * 1024);

  const std::string base = "/sys/devices/system/node/";
  for (const auto& n : list_dir(base)) {
    int id = numbered(n, "node");
    if (id < 0) continue;
    t.numa.push_back({id, read_first_line(base + n + "/cpulist"), meminfo_mib(base + n + "/meminfo", "MemTotal:")});
  }
  std::sort(t.numa.begin(), t.numa.end(), [](const NumaNode& a, const NumaNode& b) { return a.id < b.id; });
  if (t.numa.empty()) {  // kernels without NUMA support: the whole machine is one node
    std::string cpus = t.logical_cores > 0 ? "0-" + std::to_string(t.logical_cores - 1) : "";
    t.numa.push_back({0, cpus, t.memory_mib});
  }
}

void detect_network(HostTopology& t) {
  auto ipv4 = ipv4_by_interface();
  const std::string net = "/sys/class/net/";
  for (const auto& n : list_dir(net)) {
    std::string dir = net + n + "/";
    if (n == "lo" || read_first_line(dir + "type") == "772") continue;  // 772: ARPHRD_LOOPBACK
    NetInterface i;
    i.name = n;
    i.operstate = read_first_line(dir + "operstate");
    // Reading speed fails (EINVAL) on down links and many virtual devices; virtio says -1.
    i.speed_mbps = std::max<int64_t>(0, to_int(read_first_line(dir + "speed")));
    auto ip = ipv4.find(n);
    if (ip != ipv4.end()) i.ipv4 = ip->second;
    i.mtu = static_cast<int>(to_int(read_first_line(dir + "mtu")));
    i.is_virtual = is_virtual_path(net + n);
    i.numa_node = read_numa_node(dir + "device/numa_node");
    t.nics.push_back(i);
  }

  const std::string ib = "/sys/class/infiniband/";
  for (const auto& dev : list_dir(ib)) {
    std::vector<std::string> netdevs = list_dir(ib + dev + "/device/net");
    for (const auto& p : list_dir(ib + dev + "/ports")) {
      std::string dir = ib + dev + "/ports/" + p + "/";
      IbPort port;
      port.device = dev;
      port.port = static_cast<int>(to_int(p));
      std::string state = read_first_line(dir + "state");  // "4: ACTIVE"
      size_t colon = state.find(':');
      port.state = colon == std::string::npos ? state : trim(state.substr(colon + 1));
      port.rate = read_first_line(dir + "rate");
      port.rate_gbps = parse_ib_rate_gbps(port.rate);
      port.link_layer = read_first_line(dir + "link_layer");
      if (!netdevs.empty()) port.netdev = netdevs.front();
      port.numa_node = read_numa_node(ib + dev + "/device/numa_node");
      t.ib.push_back(port);
    }
  }
}

HostTopology detect_host_topology() {
  HostTopology t;
  guarded("host name", [&] {
    char name[256] = {0};
    gethostname(name, sizeof(name) - 1);
    t.hostname = name;
    t.host_id = this_host_id();
  });
  guarded("CPU and memory", [&] { detect_cpu_and_memory(t); });
  guarded("GPUs", [&] { detect_gpus(t); });
  guarded("network", [&] { detect_network(t); });
  return t;
}

}  // namespace plexus
