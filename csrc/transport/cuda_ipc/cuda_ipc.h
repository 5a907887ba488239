// CUDA IPC between the processes of one host (csrc/transport/cuda_ipc/cuda_ipc.cu): a rank
// exports the device allocation behind a pointer and an interprocess event; its peers map the
// allocation into their address space (NVLink / PCIe peer access, or the same GPU) and wait on
// the event from their own streams, so kernels read and write peers' memory with no host copy.
// Plain C++ (callers need no CUDA headers); only built when the build has CUDA.
// Every function runs with `device` current on the calling thread and puts the caller's device
// back afterwards (torch and cupy read it from the same driver context), and throws
// plexus::Error with the CUDA error's name when the runtime refuses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace plexus {
namespace cuda_ipc {

constexpr size_t kHandleBytes = 64;  // CUDA_IPC_HANDLE_SIZE

struct Exported {
  std::string handle;  // kHandleBytes bytes: the cudaIpcMemHandle_t of the whole allocation
  size_t offset = 0;   // of the pointer from the allocation's start
};

// The allocation that holds `ptr` (cudaMalloc memory; not cudaMallocAsync pools or VMM).
Exported export_memory(int device, const void* ptr);
// Maps a peer's allocation here; returns its start. Opening the same handle twice returns the
// same address (the driver counts references); close_memory() once per open_memory().
void* open_memory(int device, const std::string& handle);
void close_memory(int device, void* base);

struct Event {
  void* event = nullptr;  // cudaEvent_t
  std::string handle;     // kHandleBytes bytes: cudaIpcEventHandle_t ("" when not interprocess)
};
// An event without timing; interprocess ones can be opened by peers, the others block the
// host thread that synchronizes on them instead of spinning a core.
Event create_event(int device, bool interprocess);
void* open_event(int device, const std::string& handle);
void destroy_event(int device, void* event);
void record(int device, void* event, void* stream);
// `stream` waits (on the GPU) for the work before the event's latest record.
void stream_wait(int device, void* stream, void* event);
bool query(int device, void* event);  // true once the work before its latest record is done
void synchronize_event(int device, void* event);
void copy(int device, void* dst, const void* src, size_t bytes, void* stream);
// A stream that does not wait for the legacy default stream (cudaStreamNonBlocking).
void* create_stream(int device);
void destroy_stream(int device, void* stream);
// A device allocation of `bytes`, zeroed before it returns (a workspace whose handle peers open).
void* alloc_zeroed(int device, size_t bytes);
void free_device(int device, void* ptr);
// Pinned host memory the device writes and the host reads without a copy (error boxes); zeroed.
// `device_ptr` gets its address for kernels.
void* alloc_mapped_host(size_t bytes, void** device_ptr);
void free_mapped_host(void* ptr);

// Waits until everything queued on the device by this process is done (before closing mappings).
void synchronize_device(int device);
// Whether `stream` is being captured into a CUDA graph (what is enqueued then runs at replays).
bool capturing(int device, void* stream);
// The device's streaming multiprocessors (what sizes the device collectives' grids).
int multiprocessors(int device);

// Makes `device` current for its lifetime, then puts back the driver context that was current
// (none, on a thread that had none: no context is created on another GPU). -1: keep the current.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;       // 1 when context_ is to be put back
  void* context_ = nullptr;  // CUcontext
};

}  // namespace cuda_ipc
}  // namespace plexus
