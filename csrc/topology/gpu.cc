// NVIDIA GPUs and the links between them. NVML (libnvidia-ml.so.1) is preferred: it sees
// every GPU of the host whatever CUDA_VISIBLE_DEVICES says, counts NVLinks and, unlike the
// CUDA driver, does not create a CUDA context (which would break fork()ed workers). The CUDA
// driver (libcuda.so.1) is the fallback for peer access only. Both are dlopen'ed: no driver
// means no GPUs, never an error. The few NVML/CUDA declarations below mirror the public
// headers, so none are needed at build time.
#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "base/log.h"
#include "topology/topology.h"

namespace plexus {
namespace {

// ---- NVML (nvml.h) ----
using nvmlReturn_t = int;  // 0 = NVML_SUCCESS
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlPciInfo_t {
  char busIdLegacy[16];
  unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];  // "00000000:18:00.0"
};
struct nvmlMemory_t {
  unsigned long long total, free, used;
};
constexpr unsigned kNvmlMaxLinks = 18;  // NVML_NVLINK_MAX_LINKS (H100/B200: 18)
constexpr int kNvmlFeatureEnabled = 1;  // NVML_FEATURE_ENABLED
constexpr int kNvmlP2pCapsRead = 0;     // NVML_P2P_CAPS_INDEX_READ
constexpr int kNvmlP2pStatusOk = 0;     // NVML_P2P_STATUS_OK

// ---- CUDA driver (cuda.h) ----
using CUresult = int;  // 0 = CUDA_SUCCESS
using CUdevice = int;

template <typename F>
F sym(void* lib, const char* name) {
  return reinterpret_cast<F>(dlsym(lib, name));
}

// "00000000:18:00.0" or "0000:18:00.0" -> "0000:18:00.0" (the sysfs spelling).
std::string normalize_bus_id(const std::string& id) {
  size_t colon = id.find(':');
  if (colon == std::string::npos) return id;
  unsigned long domain = std::strtoul(id.substr(0, colon).c_str(), nullptr, 16);
  char dom[16];
  std::snprintf(dom, sizeof(dom), "%04lx", domain);
  std::string rest = id.substr(colon);
  for (auto& c : rest) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return dom + rest;
}

int pci_numa_node(const std::string& bus_id) {
  return read_numa_node("/sys/bus/pci/devices/" + bus_id + "/numa_node");
}

void square(HostTopology& t) {
  size_t n = t.gpus.size();
  t.gpu_links.assign(n, std::vector<std::string>(n, "pcie"));
  t.nvlinks.assign(n, std::vector<int>(n, 0));
  for (size_t i = 0; i < n; ++i) t.gpu_links[i][i] = "self";
}

bool detect_nvml(HostTopology& t) {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return false;  // kept open: unloading NVML is not worth its risks
  auto init = sym<nvmlReturn_t (*)()>(lib, "nvmlInit_v2");
  auto shutdown = sym<nvmlReturn_t (*)()>(lib, "nvmlShutdown");
  auto count = sym<nvmlReturn_t (*)(unsigned*)>(lib, "nvmlDeviceGetCount_v2");
  auto by_index = sym<nvmlReturn_t (*)(unsigned, nvmlDevice_t*)>(lib, "nvmlDeviceGetHandleByIndex_v2");
  auto pci = sym<nvmlReturn_t (*)(nvmlDevice_t, nvmlPciInfo_t*)>(lib, "nvmlDeviceGetPciInfo_v3");
  auto name = sym<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned)>(lib, "nvmlDeviceGetName");
  auto memory = sym<nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t*)>(lib, "nvmlDeviceGetMemoryInfo");
  auto link_state = sym<nvmlReturn_t (*)(nvmlDevice_t, unsigned, int*)>(lib, "nvmlDeviceGetNvLinkState");
  auto remote_pci =
      sym<nvmlReturn_t (*)(nvmlDevice_t, unsigned, nvmlPciInfo_t*)>(lib, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
  auto p2p = sym<nvmlReturn_t (*)(nvmlDevice_t, nvmlDevice_t, int, int*)>(lib, "nvmlDeviceGetP2PStatus");
  if (!init || !count || !by_index || !pci || init() != 0) return false;

  unsigned n = 0;
  std::vector<nvmlDevice_t> dev;
  if (count(&n) == 0) {
    for (unsigned i = 0; i < n; ++i) {
      nvmlDevice_t d = nullptr;
      nvmlPciInfo_t info{};
      if (by_index(i, &d) != 0 || pci(d, &info) != 0) continue;
      GpuInfo g;
      g.index = static_cast<int>(t.gpus.size());
      g.pci_bus_id = normalize_bus_id(info.busId);
      char buf[96] = {0};
      if (name && name(d, buf, sizeof(buf)) == 0) g.name = buf;
      nvmlMemory_t mem{};
      if (memory && memory(d, &mem) == 0) g.memory_mib = static_cast<int64_t>(mem.total >> 20);
      g.numa_node = pci_numa_node(g.pci_bus_id);
      t.gpus.push_back(g);
      dev.push_back(d);
    }
  }
  square(t);

  // Links whose far end is not one of our GPUs go to an NVSwitch: every pair of GPUs on
  // switches is connected, with the bandwidth of the thinner side (as in NCCL's topo.cc).
  std::map<std::string, size_t> by_bus;
  for (size_t i = 0; i < t.gpus.size(); ++i) by_bus[t.gpus[i].pci_bus_id] = i;
  std::vector<int> switch_links(t.gpus.size(), 0);
  for (size_t a = 0; a < dev.size() && link_state && remote_pci; ++a) {
    for (unsigned l = 0; l < kNvmlMaxLinks; ++l) {
      int active = 0;
      if (link_state(dev[a], l, &active) != 0 || active != kNvmlFeatureEnabled) continue;
      nvmlPciInfo_t far{};
      auto it = remote_pci(dev[a], l, &far) == 0 ? by_bus.find(normalize_bus_id(far.busId)) : by_bus.end();
      if (it == by_bus.end()) ++switch_links[a];
      else if (it->second != a) ++t.nvlinks[a][it->second];
    }
  }
  for (size_t a = 0; a < dev.size(); ++a) {
    for (size_t b = 0; b < dev.size(); ++b) {
      if (a == b) continue;
      if (switch_links[a] > 0 && switch_links[b] > 0) t.nvlinks[a][b] += std::min(switch_links[a], switch_links[b]);
      int status = -1;
      if (t.nvlinks[a][b] > 0) t.gpu_links[a][b] = "nvlink";
      else if (p2p && p2p(dev[a], dev[b], kNvmlP2pCapsRead, &status) == 0 && status == kNvmlP2pStatusOk)
        t.gpu_links[a][b] = "p2p";
    }
  }
  if (shutdown) shutdown();
  t.gpu_source = "nvml";
  return true;
}

// Only when NVML is missing: cuInit() sees CUDA_VISIBLE_DEVICES and knows no NVLink counts.
bool detect_cuda(HostTopology& t) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return false;
  auto init = sym<CUresult (*)(unsigned)>(lib, "cuInit");
  auto count = sym<CUresult (*)(int*)>(lib, "cuDeviceGetCount");
  auto get = sym<CUresult (*)(CUdevice*, int)>(lib, "cuDeviceGet");
  auto name = sym<CUresult (*)(char*, int, CUdevice)>(lib, "cuDeviceGetName");
  auto memory = sym<CUresult (*)(size_t*, CUdevice)>(lib, "cuDeviceTotalMem_v2");
  auto bus_id = sym<CUresult (*)(char*, int, CUdevice)>(lib, "cuDeviceGetPCIBusId");
  auto can_peer = sym<CUresult (*)(int*, CUdevice, CUdevice)>(lib, "cuDeviceCanAccessPeer");
  int n = 0;
  if (!init || !count || !get || init(0) != 0 || count(&n) != 0) return false;

  std::vector<std::pair<GpuInfo, CUdevice>> found;
  for (int i = 0; i < n; ++i) {
    CUdevice d = 0;
    if (get(&d, i) != 0) continue;
    GpuInfo g;
    char buf[96] = {0};
    if (bus_id && bus_id(buf, sizeof(buf), d) == 0) g.pci_bus_id = normalize_bus_id(buf);
    char nbuf[256] = {0};
    if (name && name(nbuf, sizeof(nbuf), d) == 0) g.name = nbuf;
    size_t bytes = 0;
    if (memory && memory(&bytes, d) == 0) g.memory_mib = static_cast<int64_t>(bytes >> 20);
    g.numa_node = pci_numa_node(g.pci_bus_id);
    found.push_back({g, d});
  }
  // PCI order, like NVML, so indices mean the same thing whichever library answered.
  std::stable_sort(found.begin(), found.end(),
                   [](const auto& x, const auto& y) { return x.first.pci_bus_id < y.first.pci_bus_id; });
  for (auto& f : found) {
    f.first.index = static_cast<int>(t.gpus.size());
    t.gpus.push_back(f.first);
  }
  square(t);
  for (size_t a = 0; a < found.size() && can_peer; ++a)
    for (size_t b = 0; b < found.size(); ++b) {
      int ok = 0;
      if (a != b && can_peer(&ok, found[a].second, found[b].second) == 0 && ok) t.gpu_links[a][b] = "p2p";
    }
  t.gpu_source = "cuda";
  return true;
}

}  // namespace

void detect_gpus(HostTopology& t) {
  // Built aside and moved in whole, so a failure half way never leaves a ragged matrix.
  HostTopology g;
  bool ok = false;
  try {
    ok = detect_nvml(g);
  } catch (...) {
    ok = false;
  }
  if (!ok) {
    g = HostTopology();
    try {
      ok = detect_cuda(g);
    } catch (...) {
      ok = false;
    }
  }
  if (!ok) return;
  t.gpus = std::move(g.gpus);
  t.gpu_links = std::move(g.gpu_links);
  t.nvlinks = std::move(g.nvlinks);
  t.gpu_source = g.gpu_source;
  PLEXUS_INFO("topology: " << t.gpus.size() << " GPU(s) via " << t.gpu_source);
}

}  // namespace plexus
