"""What the device paths need from each GPU array library: the array's device, the caller's
current stream, pinned host memory, working device memory, copies between a device array and host
bytes on that stream, and events.

CupyOps serves cupy arrays (and any other object with __cuda_array_interface__, through cupy);
TorchOps serves torch CUDA tensors. Host bytes are a pinned.Block (`host`: numpy uint8 view,
`keep`: the owning object) and an offset into it. Libraries are imported lazily: plexus never
imports cupy or torch unless the caller already handed it one of their arrays.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np


class _Event:
    __slots__ = ("done", "wait", "stream_wait")

    def __init__(self, done, wait, stream_wait):
        self.done = done  # () -> bool
        self.wait = wait  # () -> None: blocks the host until the work before the record is done
        self.stream_wait = stream_wait  # (stream) -> None: that stream waits for it, on the GPU


class CupyOps:
    kind = "cupy"

    def __init__(self) -> None:
        try:
            import cupy
        except ImportError:
            raise TypeError("staging device arrays other than torch tensors needs cupy; install cupy") from None
        self.cp = cupy

    def wrap(self, x: Any) -> Any:
        """A cupy array over any __cuda_array_interface__ object (no copy)."""
        return x if isinstance(x, self.cp.ndarray) else self.cp.asarray(x)

    def device_of(self, x: Any) -> int:
        return int(x.device.id)

    def current_stream(self, device: int) -> Any:
        if self.cp.cuda.runtime.getDevice() == device:  # the usual case: no device switch
            return self.cp.cuda.get_current_stream()
        with self.cp.cuda.Device(device):
            return self.cp.cuda.get_current_stream()

    def placement(self, x: Any) -> Tuple[int, int]:
        """(device, current stream as an int) of a cupy array: the hot path of a device call."""
        dev = x.device.id if type(x) is self.cp.ndarray else self.device_of(self.wrap(x))
        return dev, self.current_stream(dev).ptr

    def alloc_host(self, nbytes: int) -> Tuple[np.ndarray, Any]:
        try:
            mem = self.cp.cuda.alloc_pinned_memory(nbytes)
            return np.frombuffer(mem, np.uint8, nbytes), mem
        except Exception:  # noqa: BLE001 - pinning can fail (ulimit -l); pageable still works
            host = np.empty(nbytes, np.uint8)
            return host, host

    def device_empty(self, device: int, nbytes: int) -> Tuple[int, Any]:
        """Working memory on `device`: (address, the object that owns it)."""
        with self.cp.cuda.Device(device):
            a = self.cp.empty(nbytes, self.cp.uint8)
        return int(a.data.ptr), a

    def to_host(self, block: Any, off: int, x: Any, ptr: int, nbytes: int, stream: Any) -> None:
        rt = self.cp.cuda.runtime
        rt.memcpyAsync(block.host.ctypes.data + off, ptr, nbytes, rt.memcpyDeviceToHost, stream.ptr)

    def to_device(self, x: Any, ptr: int, block: Any, off: int, nbytes: int, stream: Any) -> None:
        rt = self.cp.cuda.runtime
        rt.memcpyAsync(ptr, block.host.ctypes.data + off, nbytes, rt.memcpyHostToDevice, stream.ptr)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def record(self, stream: Any) -> _Event:
        ev = self.cp.cuda.Event(block=True, disable_timing=True)
        ev.record(stream)
        return _Event(lambda: ev.done, ev.synchronize, lambda s: s.wait_event(ev))


class TorchOps:
    kind = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def wrap(self, t: Any) -> Any:
        return t

    def device_of(self, t: Any) -> int:
        return int(t.device.index if t.device.index is not None else self.torch.cuda.current_device())

    def current_stream(self, device: int) -> Any:
        return self.torch.cuda.current_stream(device)

    def placement(self, t: Any) -> Tuple[int, int]:
        dev = t.get_device()
        return dev, self.torch.cuda.current_stream(dev).cuda_stream

    def alloc_host(self, nbytes: int) -> Tuple[np.ndarray, Any]:
        try:
            t = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        except Exception:  # noqa: BLE001
            t = self.torch.empty(nbytes, dtype=self.torch.uint8)
        return t.numpy(), t

    def device_empty(self, device: int, nbytes: int) -> Tuple[int, Any]:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=f"cuda:{device}")
        return int(t.data_ptr()), t

    def _host(self, block: Any, off: int, nbytes: int) -> Any:
        return block.keep[off:off + nbytes]  # blocks of torch arrays are torch-allocated

    def _bytes(self, t: Any, ptr: int, nbytes: int) -> Any:
        """The `nbytes` bytes of tensor `t` from address `ptr` (a chunk of it, or all of it)."""
        start = ptr - t.data_ptr()
        return t.reshape(-1).view(self.torch.uint8)[start:start + nbytes]

    def to_host(self, block: Any, off: int, t: Any, ptr: int, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self._host(block, off, nbytes).copy_(self._bytes(t, ptr, nbytes), non_blocking=True)

    def to_device(self, t: Any, ptr: int, block: Any, off: int, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            self._bytes(t, ptr, nbytes).copy_(self._host(block, off, nbytes), non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def record(self, stream: Any) -> _Event:
        ev = self.torch.cuda.Event(blocking=True)
        ev.record(stream)
        return _Event(ev.query, ev.synchronize, lambda s: s.wait_event(ev))


_OPS: dict = {}
_FACTORIES = {"cupy": CupyOps, "torch": TorchOps}


def ops_for(kind: str) -> Any:
    """The ops of one library ("cupy" or "torch"), created once."""
    ops = _OPS.get(kind)
    if ops is None:
        ops = _OPS[kind] = _FACTORIES[kind]()
    return ops
