// UCX (openucx), loaded at run time: Plexus builds and runs with no UCX anywhere, and uses the
// one the machine has (an InfiniBand cluster's own, HPC-X, MLNX-OFED) when it has one. The UCP
// functions the ucx transport calls come through the table below, filled with dlsym from
// PLEXUS_UCX_LIBRARY, else the system's libucp.so.0, else the libucx wheel's (the path Python
// passes in, see set_wheel_library). The headers are UCX 1.22's (third_party/ucx); the
// library may be any 1.x from 1.12 on, whose API they keep.
#pragma once

#include <ucp/api/ucp.h>

#include <string>
#include <vector>

namespace plexus {
namespace ucx {

struct Api {
  void (*get_version)(unsigned*, unsigned*, unsigned*);
  ucs_status_t (*config_read)(const char*, const char*, ucp_config_t**);
  void (*config_release)(ucp_config_t*);
  ucs_status_t (*config_modify)(ucp_config_t*, const char*, const char*);
  ucs_status_t (*init_version)(unsigned, unsigned, const ucp_params_t*, const ucp_config_t*, ucp_context_h*);
  void (*context_print_info)(const ucp_context_h, FILE*);
  ucs_status_t (*context_query)(ucp_context_h, ucp_context_attr_t*);
  ucs_status_t (*worker_create)(ucp_context_h, const ucp_worker_params_t*, ucp_worker_h*);
  void (*worker_destroy)(ucp_worker_h);
  ucs_status_t (*worker_get_address)(ucp_worker_h, ucp_address_t**, size_t*);
  void (*worker_release_address)(ucp_worker_h, ucp_address_t*);
  unsigned (*worker_progress)(ucp_worker_h);
  ucs_status_t (*worker_get_efd)(ucp_worker_h, int*);
  ucs_status_t (*worker_arm)(ucp_worker_h);
  ucs_status_t (*ep_create)(ucp_worker_h, const ucp_ep_params_t*, ucp_ep_h*);
  ucs_status_ptr_t (*ep_close_nbx)(ucp_ep_h, const ucp_request_param_t*);
  ucs_status_ptr_t (*ep_flush_nbx)(ucp_ep_h, const ucp_request_param_t*);
  ucs_status_ptr_t (*tag_send_nbx)(ucp_ep_h, const void*, size_t, ucp_tag_t, const ucp_request_param_t*);
  ucp_tag_message_h (*tag_probe_nb)(ucp_worker_h, ucp_tag_t, ucp_tag_t, int, ucp_tag_recv_info_t*);
  ucs_status_ptr_t (*tag_msg_recv_nbx)(ucp_worker_h, void*, size_t, ucp_tag_message_h, const ucp_request_param_t*);
  ucs_status_ptr_t (*tag_recv_nbx)(ucp_worker_h, void*, size_t, ucp_tag_t, ucp_tag_t, const ucp_request_param_t*);
  ucs_status_t (*request_check_status)(void*);
  void (*request_free)(void*);
  void (*request_cancel)(ucp_worker_h, void*);
  const char* (*status_string)(ucs_status_t);
};

// What loading found, once per process. `context` is shared by every communicator's worker.
struct Library {
  bool ok = false;
  std::string problem;  // why not, when not ok
  std::string path;     // the file loaded
  std::string version;  // "1.22.0"
  unsigned major = 0, minor = 0;
  std::vector<std::string> transports;  // UCX's transports with a usable device ("tcp", "rc_mlx5", ...)
  bool rdma = false;                    // one of them is InfiniBand / RoCE (rc, dc, ud)
  bool network = false;                 // one of them crosses hosts (not only shared memory)
  bool cuda_memory = false;             // UCX moves CUDA memory itself
  Api api{};
  ucp_context_h context = nullptr;
};

// Loads UCX and creates the context on the first call (from any thread); never throws.
const Library& library();
// The libucx wheel's libucp.so.0, the last place looked (Python finds the wheel). Before library().
void set_wheel_library(const std::string& path);
// Whether the kernel lists an InfiniBand / RoCE device (/sys/class/infiniband): without one, the
// default choice need not load UCX to learn it has none.
bool rdma_devices_present();
// A UCX status in words.
std::string status_text(ucs_status_t status);

}  // namespace ucx
}  // namespace plexus
