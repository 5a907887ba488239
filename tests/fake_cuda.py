"""Host memory posing as GPU memory, for plexus.device.ipc without a GPU.

FakeCuda replaces the ipc module's driver (set_driver): arrays live in files under a folder that
every rank of a test shares, so a peer "opens an IPC handle" by mapping the file named in it;
the reduction is the CPU kernel (plexus._C._reduce) and copies are memmove. Everything runs at
once on the host, so events have nothing to order (they are counted, not simulated). What this
checks is the ipc module's logic across real processes: the records exchanged, the slices and offsets,
the pointers of every rank, the agreement to fall back, the errors.
"""

from __future__ import annotations

import collections
import ctypes
import os
from typing import List, Optional

import numpy as np

from plexus import _C


class FakeDeviceArray:
    """A view of fake device memory seen only through __cuda_array_interface__, like cupy."""

    def __init__(self, host: np.ndarray, device_id: int = 0):
        self.host, self.device_id = host, device_id

    @property
    def __cuda_array_interface__(self):
        h = self.host
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.ctypes.data, False), "strides": None,
                "version": 3}


class FakeCuda:
    """The driver interface of plexus.device.ipc.CudaDriver, on host memory."""

    memory = "host"  # what UCX is told these arrays are (plexus.device.direct)

    def __init__(self, folder: str, rank: int, fail_export: bool = False, fail_open: bool = False,
                 fail_reduce: bool = False, problem: Optional[str] = None, fail_placement: bool = False,
                 native: bool = False):
        self.folder, self.rank = folder, rank
        # native=True: the native device path runs on the emulated device (the C++ protocol on
        # host memory); False: this driver offers only the CUDA IPC calls below.
        self.native = "emulated" if native else None
        self.fail_export, self.fail_open, self.fail_reduce, self._problem = fail_export, fail_open, fail_reduce, problem
        self.fail_placement = fail_placement
        self.segments: List[tuple] = []  # (start, size, name, memmap)
        self.mapped = {}
        self.calls = collections.Counter()
        self.opened = collections.Counter()  # segment name -> times mapped
        self.events = 0
        self.busy = False  # True: the "GPU" has not finished what was queued (events not done)
        self.capture = False  # True: the caller's stream is being captured into a graph

    # --- memory the tests allocate --------------------------------------------------------
    def array(self, values: np.ndarray, offset: int = 0) -> FakeDeviceArray:
        """A fake device array holding `values`, `offset` bytes into its allocation."""
        values = np.ascontiguousarray(values)
        name = f"r{self.rank}-{len(self.segments)}"
        size = max(1, offset + values.nbytes)
        m = np.memmap(os.path.join(self.folder, name), np.uint8, "w+", shape=(size,))
        self.segments.append((m.ctypes.data, size, name, m))
        host = m[offset:offset + values.nbytes].view(values.dtype).reshape(values.shape)
        host[...] = values
        return FakeDeviceArray(host)

    # --- the driver -----------------------------------------------------------------------
    def problem(self) -> Optional[str]:
        return self._problem

    def placement(self, buf):
        if self.fail_placement:
            raise TypeError("fake: staging device arrays other than torch tensors needs cupy")
        return buf.obj.device_id, 7

    def current_stream(self, kind, device):
        return 7

    def fast_array(self, x):
        """As CudaDriver.fast_array: a fake array's address and dtype are fixed, so they are
        read once (cupy's and torch's attribute reads are cheap; numpy's ctypes is not)."""
        if type(x) is not FakeDeviceArray:
            return None
        fast = x.__dict__.get("_fast", False)
        if fast is False:
            h = x.host
            name = "bool" if h.dtype == np.bool_ else h.dtype.name
            ok = h.flags.c_contiguous and name in _C.DTYPES
            fast = x._fast = (h.ctypes.data, h.size, _C.DTYPES.index(name), x.device_id, 7) if ok else None
        return fast

    def export(self, device, ptr):
        self.calls["export"] += 1
        if self.fail_export:
            raise RuntimeError("fake: cudaIpcGetMemHandle refused")
        for start, size, name, _ in self.segments:
            if start <= ptr < start + size:
                return name.encode().ljust(64, b"\0"), ptr - start
        raise RuntimeError(f"fake: {ptr:#x} is not fake device memory")

    def open(self, device, handle):
        self.calls["open"] += 1
        if self.fail_open:
            raise RuntimeError("fake: cudaIpcOpenMemHandle refused")
        name = handle.rstrip(b"\0").decode()
        self.opened[name] += 1
        m = np.memmap(os.path.join(self.folder, name), np.uint8, "r+")
        self.mapped[m.ctypes.data] = m
        return m.ctypes.data

    def close(self, device, base):
        self.calls["close"] += 1
        assert not self.busy, "a mapping closed while the GPU may still use it"
        self.mapped.pop(base)

    def event_create(self, device, interprocess):
        self.events += 1
        handle = f"ev-{self.rank}-{self.events}".encode().ljust(64, b"\0") if interprocess else b""
        return self.events, handle

    def event_open(self, device, handle):
        self.calls["event_open"] += 1
        return 1000 + len(handle.rstrip(b"\0"))

    def event_destroy(self, device, ev):
        self.calls["event_destroy"] += 1

    def record(self, device, ev, stream):
        assert stream == 7, "ops go on the caller's current stream"
        self.calls["record"] += 1

    def wait(self, device, stream, ev):
        assert stream == 7
        self.calls["wait"] += 1

    def query(self, device, ev):
        return not self.busy

    def synchronize(self, device, ev):
        self.calls["synchronize"] += 1
        self.busy = False  # the host waited: the GPU is done

    def capturing(self, device, stream):
        assert stream == 7
        return self.capture

    def synchronize_device(self, device):
        self.calls["synchronize_device"] += 1
        self.busy = False

    def copy(self, device, dst, src, nbytes, stream):
        self.calls["copy"] += 1
        if nbytes and dst != src:
            ctypes.memmove(dst, src, nbytes)

    def reduce_to(self, op, dtype, dsts, srcs, n, scale, stream, device):
        self.calls["reduce"] += 1
        if self.fail_reduce:
            raise RuntimeError("fake: kernel launch failed")
        assert 1 <= len(dsts) <= 8
        _C._reduce(op, dtype, dsts[0], srcs, n, scale)
        itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int32": 4,
                    "int64": 8, "bool": 1}[_C.DTYPES[dtype]]
        for d in dsts[1:]:
            ctypes.memmove(d, dsts[0], n * itemsize)
