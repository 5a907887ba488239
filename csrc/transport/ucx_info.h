// What the layers above may know of the ucx transport without seeing UCX: whether it loads, from
// where, what it has (for `plexus info`), and where the libucx wheel is (from Python).
#pragma once

#include <string>
#include <vector>

namespace plexus {

struct UcxInfo {
  bool ok = false;
  std::string problem;  // why not, when not ok
  std::string path, version;
  std::vector<std::string> transports;  // UCX's transports with a usable device
  bool rdma = false;                    // InfiniBand / RoCE among them
  bool cuda_memory = false;             // UCX moves CUDA memory itself
};

// Loads UCX if it was not (transport/ucx/library.cc).
UcxInfo ucx_info();
// The libucx wheel's libucp.so.0: the last place the ucx transport looks.
void ucx_set_wheel_library(const std::string& path);

}  // namespace plexus
