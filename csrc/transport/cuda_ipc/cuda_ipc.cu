// CUDA IPC primitives (see cuda_ipc.h). The runtime is linked statically, so the one driver call
// the runtime has no name for (the start of the allocation behind a pointer) is looked up
// through cudaGetDriverEntryPointByVersion instead of linking libcuda.
#include "transport/cuda_ipc/cuda_ipc.h"

#include <cuda_runtime.h>

#include <cstring>
#include <mutex>

#include "base/error.h"

namespace plexus {
namespace cuda_ipc {
namespace {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear it, so that a later check does not report it again
  throw Error(std::string("cuda_ipc: ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// A driver API function, looked up through the runtime (nullptr when the driver lacks it).
void* driver_symbol(const char* name) {
  void* p = nullptr;
#if CUDART_VERSION >= 12050
  cudaDriverEntryPointQueryResult found{};
  bool ok = cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess;
#elif CUDART_VERSION >= 12000
  cudaDriverEntryPointQueryResult found{};
  bool ok = cudaGetDriverEntryPoint(name, &p, cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess;
#else
  bool ok = cudaGetDriverEntryPoint(name, &p, cudaEnableDefault) == cudaSuccess;
#endif
  if (!ok) cudaGetLastError();
  return ok ? p : nullptr;
}

// CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr ptr).
using AddressRangeFn = int (*)(unsigned long long*, size_t*, unsigned long long);
// CUresult cuCtxGetCurrent(CUcontext*), cuCtxSetCurrent(CUcontext).
using CtxGetFn = int (*)(void**);
using CtxSetFn = int (*)(void*);

AddressRangeFn address_range_fn() {
  static AddressRangeFn fn = reinterpret_cast<AddressRangeFn>(driver_symbol("cuMemGetAddressRange"));
  return fn;
}

template <typename Handle>
std::string to_bytes(const Handle& h) {
  static_assert(sizeof(Handle) == kHandleBytes, "CUDA IPC handles are 64 bytes");
  return std::string(reinterpret_cast<const char*>(&h), sizeof h);
}

template <typename Handle>
Handle from_bytes(const std::string& bytes, const char* what) {
  if (bytes.size() != sizeof(Handle))
    throw InvalidArgument(std::string("cuda_ipc: ") + what + " must be " + std::to_string(sizeof(Handle)) +
                          " bytes, got " + std::to_string(bytes.size()));
  Handle h;
  std::memcpy(&h, bytes.data(), sizeof h);
  return h;
}

}  // namespace

// The caller's driver context is saved and put back as it was, rather than "its device": on a
// thread that never used CUDA, setting device 0 back would create a context on GPU 0.
DeviceGuard::DeviceGuard(int device) {
  if (device < 0) return;
  static CtxGetFn get = reinterpret_cast<CtxGetFn>(driver_symbol("cuCtxGetCurrent"));
  int current = -1;
  check(cudaGetDevice(&current), "cudaGetDevice");
  void* ctx = nullptr;
  const bool known = get && get(&ctx) == 0;
  if (current == device && known && ctx) return;  // already there
  check(cudaSetDevice(device), "cudaSetDevice");
  if (known) {
    previous_ = 1;
    context_ = ctx;
  }
}

DeviceGuard::~DeviceGuard() {
  static CtxSetFn set = reinterpret_cast<CtxSetFn>(driver_symbol("cuCtxSetCurrent"));
  if (previous_ >= 0 && set) set(context_);
}

void synchronize_device(int device) {
  DeviceGuard g(device);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

bool capturing(int device, void* stream) {
  DeviceGuard g(device);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

int multiprocessors(int device) {
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return n;
}

Exported export_memory(int device, const void* ptr) {
  DeviceGuard g(device);
  AddressRangeFn range = address_range_fn();
  if (!range) throw Error("cuda_ipc: the CUDA driver has no cuMemGetAddressRange");
  unsigned long long base = 0;
  size_t size = 0;
  int rc = range(&base, &size, reinterpret_cast<uintptr_t>(ptr));
  if (rc != 0) throw Error("cuda_ipc: cuMemGetAddressRange failed (CUresult " + std::to_string(rc) + "): not device memory?");
  cudaIpcMemHandle_t h;
  check(cudaIpcGetMemHandle(&h, reinterpret_cast<void*>(base)), "cudaIpcGetMemHandle");
  return Exported{to_bytes(h), static_cast<size_t>(reinterpret_cast<uintptr_t>(ptr) - base)};
}

void* open_memory(int device, const std::string& handle) {
  DeviceGuard g(device);
  void* p = nullptr;
  check(cudaIpcOpenMemHandle(&p, from_bytes<cudaIpcMemHandle_t>(handle, "a memory handle"),
                             cudaIpcMemLazyEnablePeerAccess),
        "cudaIpcOpenMemHandle");
  return p;
}

void close_memory(int device, void* base) {
  DeviceGuard g(device);
  check(cudaIpcCloseMemHandle(base), "cudaIpcCloseMemHandle");
}

Event create_event(int device, bool interprocess) {
  DeviceGuard g(device);
  Event ev;
  cudaEvent_t e = nullptr;
  unsigned flags = cudaEventDisableTiming | (interprocess ? cudaEventInterprocess : cudaEventBlockingSync);
  check(cudaEventCreateWithFlags(&e, flags), "cudaEventCreateWithFlags");
  ev.event = e;
  if (interprocess) {
    cudaIpcEventHandle_t h;
    cudaError_t err = cudaIpcGetEventHandle(&h, e);
    if (err != cudaSuccess) {
      cudaEventDestroy(e);
      check(err, "cudaIpcGetEventHandle");
    }
    ev.handle = to_bytes(h);
  }
  return ev;
}

void* open_event(int device, const std::string& handle) {
  DeviceGuard g(device);
  cudaEvent_t e = nullptr;
  check(cudaIpcOpenEventHandle(&e, from_bytes<cudaIpcEventHandle_t>(handle, "an event handle")),
        "cudaIpcOpenEventHandle");
  return e;
}

void destroy_event(int device, void* event) {
  DeviceGuard g(device);
  check(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
}

void record(int device, void* event, void* stream) {
  DeviceGuard g(device);
  check(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)), "cudaEventRecord");
}

void stream_wait(int device, void* stream, void* event) {
  DeviceGuard g(device);
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
        "cudaStreamWaitEvent");
}

bool query(int device, void* event) {
  DeviceGuard g(device);
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(e, "cudaEventQuery");
  return true;
}

void synchronize_event(int device, void* event) {
  DeviceGuard g(device);
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
}

void copy(int device, void* dst, const void* src, size_t bytes, void* stream) {
  if (bytes == 0 || dst == src) return;
  DeviceGuard g(device);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)), "cudaMemcpyAsync");
}

void* create_stream(int device) {
  DeviceGuard g(device);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return s;
}

void destroy_stream(int device, void* stream) {
  DeviceGuard g(device);
  check(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
}

void* alloc_zeroed(int device, size_t bytes) {
  DeviceGuard on(device);
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  cudaError_t e = cudaMemset(p, 0, bytes);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    cudaFree(p);
    check(e, "cudaMemset");
  }
  return p;
}

void free_device(int device, void* ptr) {
  DeviceGuard on(device);
  check(cudaFree(ptr), "cudaFree");
}

void* alloc_mapped_host(size_t bytes, void** device_ptr) {
  void* p = nullptr;
  check(cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc");
  std::memset(p, 0, bytes);
  cudaError_t e = cudaHostGetDevicePointer(device_ptr, p, 0);
  if (e != cudaSuccess) {
    cudaFreeHost(p);
    check(e, "cudaHostGetDevicePointer");
  }
  return p;
}

void free_mapped_host(void* ptr) { check(cudaFreeHost(ptr), "cudaFreeHost"); }

}  // namespace cuda_ipc
}  // namespace plexus
