// Finding and loading libucp, the function table, and the process-wide UCP context.
#include "transport/ucx/library.h"

#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "base/config.h"
#include "transport/ucx_info.h"

namespace plexus {
namespace ucx {

namespace {

constexpr unsigned kMinMinor = 12;  // the oldest 1.x whose API (nbx calls, memory types) we use

std::mutex g_mutex;
std::string g_wheel_library;

// Fills the table from `handle` (dlsym also searches libucp's own dependencies: libucs).
std::string resolve(void* handle, Api* api) {
  std::string missing;
  auto get = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
    if (!fn) missing += (missing.empty() ? "" : ", ") + std::string(name);
  };
  get(api->get_version, "ucp_get_version");
  get(api->config_read, "ucp_config_read");
  get(api->config_release, "ucp_config_release");
  get(api->config_modify, "ucp_config_modify");
  get(api->init_version, "ucp_init_version");
  get(api->context_print_info, "ucp_context_print_info");
  get(api->context_query, "ucp_context_query");
  get(api->worker_create, "ucp_worker_create");
  get(api->worker_destroy, "ucp_worker_destroy");
  get(api->worker_get_address, "ucp_worker_get_address");
  get(api->worker_release_address, "ucp_worker_release_address");
  get(api->worker_progress, "ucp_worker_progress");
  get(api->worker_get_efd, "ucp_worker_get_efd");
  get(api->worker_arm, "ucp_worker_arm");
  get(api->ep_create, "ucp_ep_create");
  get(api->ep_close_nbx, "ucp_ep_close_nbx");
  get(api->ep_flush_nbx, "ucp_ep_flush_nbx");
  get(api->tag_send_nbx, "ucp_tag_send_nbx");
  get(api->tag_probe_nb, "ucp_tag_probe_nb");
  get(api->tag_msg_recv_nbx, "ucp_tag_msg_recv_nbx");
  get(api->tag_recv_nbx, "ucp_tag_recv_nbx");
  get(api->request_check_status, "ucp_request_check_status");
  get(api->request_free, "ucp_request_free");
  get(api->request_cancel, "ucp_request_cancel");
  get(api->status_string, "ucs_status_string");
  return missing.empty() ? "" : "missing symbols: " + missing;
}

// The transports UCX found devices for, from the resource lines of ucp_context_print_info
// ("#  resource 3  :  md 1  dev 2  flags -- rc_mlx5/mlx5_0:1"): UCX has no query for them.
std::vector<std::string> transports_of(const Api& api, ucp_context_h context) {
  char* text = nullptr;
  size_t size = 0;
  FILE* f = open_memstream(&text, &size);
  if (!f) return {};
  api.context_print_info(context, f);
  std::fclose(f);
  std::vector<std::string> out;
  std::istringstream lines(std::string(text, size));
  std::free(text);
  for (std::string line; std::getline(lines, line);) {
    size_t at = line.find("flags -- ");
    if (line.find("resource") == std::string::npos || at == std::string::npos) continue;
    std::string tl = line.substr(at + 9, line.find('/', at) - at - 9);
    if (!tl.empty() && std::find(out.begin(), out.end(), tl) == out.end()) out.push_back(tl);
  }
  return out;
}

bool is_rdma(const std::string& tl) {
  return tl.rfind("rc", 0) == 0 || tl.rfind("dc", 0) == 0 || tl.rfind("ud", 0) == 0;
}

// Loads `path`; on success fills lib (but the context) and returns "", else why not.
std::string load(const std::string& path, Library* lib) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) return dlerror();
  std::string missing = resolve(handle, &lib->api);
  if (!missing.empty()) return path + ": " + missing;
  unsigned release = 0;
  lib->api.get_version(&lib->major, &lib->minor, &release);
  lib->version = std::to_string(lib->major) + "." + std::to_string(lib->minor) + "." + std::to_string(release);
  if (lib->major != 1 || lib->minor < kMinMinor)
    return path + " is UCX " + lib->version + "; Plexus needs 1." + std::to_string(kMinMinor) + " or a later 1.x";
  Dl_info info{};
  lib->path = dladdr(reinterpret_cast<void*>(lib->api.init_version), &info) && info.dli_fname ? info.dli_fname : path;
  return "";
}

std::string create_context(Library* lib) {
  ucp_config_t* config = nullptr;
  ucs_status_t st = lib->api.config_read(nullptr, nullptr, &config);  // UCX_* from the environment
  if (st != UCS_OK) return "ucp_config_read: " + std::string(lib->api.status_string(st));
  // UCX's TCP defaults (8 KiB segments) move a third less than Plexus's own TCP; larger segments
  // and socket buffers bring it level. A segment stays under the kernel's send size goal (whole
  // MSS under its 64 KiB GSO limit: 65160 B at a 1500-byte MTU, 62636 B at 9000): a 64 KiB one
  // went out as two GSO packets, one of them tiny, and cost a quarter more CPU between two
  // network namespaces. A user's UCX_* setting wins.
  for (const auto& [name, value] : {std::pair<const char*, const char*>{"TCP_TX_SEG_SIZE", "60k"},
                                    {"TCP_RX_SEG_SIZE", "60k"}, {"TCP_SNDBUF", "4m"}, {"TCP_RCVBUF", "4m"}})
    if (!std::getenv(("UCX_" + std::string(name)).c_str())) lib->api.config_modify(config, name, value);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;  // wakeup: waiting ranks sleep in poll()
  params.mt_workers_shared = 1;  // each communicator has a worker, used from its own threads
  // The library's own API version: these headers are newer, and what we use is in both.
  st = lib->api.init_version(lib->major, lib->minor, &params, config, &lib->context);
  lib->api.config_release(config);
  if (st != UCS_OK) return "ucp_init: " + std::string(lib->api.status_string(st));
  lib->transports = transports_of(lib->api, lib->context);
  lib->rdma = std::any_of(lib->transports.begin(), lib->transports.end(), is_rdma);
  lib->network = std::any_of(lib->transports.begin(), lib->transports.end(), [](const std::string& tl) {
    for (const char* local : {"self", "posix", "sysv", "cma", "knem", "xpmem", "cuda", "rocm", "gdr", "ze"})
      if (tl.rfind(local, 0) == 0) return false;
    return true;
  });
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (lib->api.context_query(lib->context, &attr) == UCS_OK)
    lib->cuda_memory = (attr.memory_types >> UCS_MEMORY_TYPE_CUDA) & 1;
  return "";
}

Library open_library() {
  Library lib;
  std::vector<std::string> tried;
  const std::string chosen = env_string("PLEXUS_UCX_LIBRARY");
  std::vector<std::string> candidates;
  if (!chosen.empty()) {
    candidates = {chosen};  // the user's choice is the only one
  } else {
    candidates = {"libucp.so.0"};
    if (!g_wheel_library.empty()) candidates.push_back(g_wheel_library);
  }
  for (const std::string& path : candidates) {
    Library attempt;
    std::string why = load(path, &attempt);
    if (why.empty()) {
      lib = attempt;
      why = create_context(&lib);
      lib.ok = why.empty();
      if (lib.ok) return lib;
    }
    tried.push_back(why);
  }
  std::string problem = chosen.empty() ? "no UCX found (not libucp.so.0 on the library path" +
                                             std::string(g_wheel_library.empty() ? ", and no libucx wheel" : "") + ")"
                                       : "PLEXUS_UCX_LIBRARY=" + chosen;
  for (const auto& t : tried) problem += "; " + t;
  lib.ok = false;
  lib.problem = problem;
  return lib;
}

}  // namespace

void set_wheel_library(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_wheel_library = path;
}

const Library& library() {
  static Library* lib = nullptr;  // never freed: UCX stays loaded for the process's life
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!lib) lib = new Library(open_library());
  return *lib;
}

bool rdma_devices_present() {
  DIR* dir = opendir("/sys/class/infiniband");
  if (!dir) return false;
  bool any = false;
  while (dirent* e = readdir(dir)) any |= e->d_name[0] != '.';
  closedir(dir);
  return any;
}

std::string status_text(ucs_status_t status) {
  const Library& lib = library();
  return lib.api.status_string ? lib.api.status_string(status) : "status " + std::to_string(status);
}

}  // namespace ucx

UcxInfo ucx_info() {
  const ucx::Library& lib = ucx::library();
  UcxInfo info;
  info.ok = lib.ok;
  info.problem = lib.problem;
  info.path = lib.path;
  info.version = lib.version;
  info.transports = lib.transports;
  info.rdma = lib.rdma;
  info.cuda_memory = lib.cuda_memory;
  return info;
}

void ucx_set_wheel_library(const std::string& path) { ucx::set_wheel_library(path); }

}  // namespace plexus
