// Workspace memory: CUDA IPC (device memory, a pinned mapped error box) and the emulated
// device's shared-memory files.
#include "transport/cuda_ipc/workspace.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "base/error.h"
#ifdef PLEXUS_WITH_CUDA
#include "transport/cuda_ipc/cuda_ipc.h"
#endif

namespace plexus {
namespace {

#ifdef PLEXUS_WITH_CUDA
class CudaWorkspace : public WorkspaceMemory {
 public:
  explicit CudaWorkspace(int device) : device_(device) {
    cuda_ipc::DeviceGuard on(device);
    host_box_ = static_cast<signals::ErrorBox*>(
        cuda_ipc::alloc_mapped_host(sizeof(signals::ErrorBox), reinterpret_cast<void**>(&device_box_)));
  }
  ~CudaWorkspace() override {
    try {
      if (base_) cuda_ipc::free_device(device_, base_);
      cuda_ipc::free_mapped_host(host_box_);
    } catch (...) {  // at exit the context may be gone
    }
  }
  void* allocate(size_t bytes) override {
    base_ = cuda_ipc::alloc_zeroed(device_, bytes);
    exported_ = cuda_ipc::export_memory(device_, base_).handle;
    return base_;
  }
  std::string handle() const override { return exported_; }
  void* open(const std::string& handle, size_t) override { return cuda_ipc::open_memory(device_, handle); }
  void close(void* base, size_t) override { cuda_ipc::close_memory(device_, base); }
  signals::ErrorBox* box() override { return host_box_; }
  signals::ErrorBox* box_for_device() override { return device_box_; }

 private:
  int device_;
  void* base_ = nullptr;
  std::string exported_;
  signals::ErrorBox* host_box_ = nullptr;
  signals::ErrorBox* device_box_ = nullptr;
};
#endif

class EmulatedWorkspace : public WorkspaceMemory {
 public:
  ~EmulatedWorkspace() override {
    if (base_) munmap(base_, bytes_);
    seal();
  }
  void* allocate(size_t bytes) override {
    static std::atomic<unsigned> serial{0};
    name_ = "/plexus-emudev-" + std::to_string(getpid()) + "-" + std::to_string(serial++);
    int fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) throw Error("emulated device: shm_open " + name_ + ": " + errno_text(errno));
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      int err = errno;
      ::close(fd);
      shm_unlink(name_.c_str());
      throw Error("emulated device: ftruncate: " + errno_text(err));
    }
    base_ = map(fd, bytes);
    bytes_ = bytes;
    return base_;
  }
  std::string handle() const override { return name_; }
  void* open(const std::string& handle, size_t bytes) override {
    std::string name(handle.c_str());  // the handle travels padded with NULs
    int fd = shm_open(name.c_str(), O_RDWR, 0600);
    if (fd < 0) throw Error("emulated device: shm_open " + name + ": " + errno_text(errno));
    return map(fd, bytes);
  }
  void close(void* base, size_t bytes) override { munmap(base, bytes); }
  void seal() override {
    if (!name_.empty()) shm_unlink(name_.c_str());
    name_.clear();
  }
  signals::ErrorBox* box() override { return &box_; }
  signals::ErrorBox* box_for_device() override { return &box_; }

 private:
  static void* map(int fd, size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) throw Error("emulated device: mmap: " + errno_text(err));
    return p;
  }

  std::string name_;
  void* base_ = nullptr;
  size_t bytes_ = 0;
  signals::ErrorBox box_{};
};

}  // namespace

#ifdef PLEXUS_WITH_CUDA
std::unique_ptr<WorkspaceMemory> make_cuda_workspace(int device) { return std::make_unique<CudaWorkspace>(device); }
#endif
std::unique_ptr<WorkspaceMemory> make_emulated_workspace() { return std::make_unique<EmulatedWorkspace>(); }

}  // namespace plexus
