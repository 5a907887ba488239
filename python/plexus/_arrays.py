"""Turns user arrays (numpy, torch CPU tensors) into raw buffer views for the C++ core.

Every check names the argument and the rank, so a bad call fails on the spot with a clear
TypeError/ValueError instead of corrupting memory or hanging the other ranks.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _C

DTYPE_CODES = {name: code for code, name in enumerate(_C.DTYPES)}
# numpy dtype object -> its name, filled as dtypes are seen (dtype.name is slow to compute).
_NUMPY_DTYPE_NAMES: dict = {}
# Set while a collective that runs device arrays in place (CUDA IPC, _cuda_ipc.py) checks its
# arguments: as_buffer() then turns device arrays into Buffers (with .device set) instead of
# refusing them with a TypeError (which sends other collectives to host staging).
_DEVICE_OK = threading.local()


def device_buffers_on() -> bool:
    return getattr(_DEVICE_OK, "on", False)


@contextlib.contextmanager
def device_buffers():
    """as_buffer() accepts device arrays (cupy, torch CUDA) inside this block, on this thread."""
    before = getattr(_DEVICE_OK, "on", False)
    _DEVICE_OK.on = True
    try:
        yield
    finally:
        _DEVICE_OK.on = before


class Buffer:
    """A contiguous array seen as raw memory: address, element count and dtype."""

    __slots__ = ("obj", "ptr", "count", "dtype", "itemsize", "code", "device")

    def __init__(self, obj: Any, ptr: int, count: int, dtype: str, itemsize: int, device: Optional[str] = None):
        self.obj = obj  # the array itself, kept alive while an op uses it
        self.ptr = ptr
        self.count = count
        self.dtype = dtype
        self.itemsize = itemsize
        self.code = DTYPE_CODES[dtype]
        self.device = device  # None: host memory; "cupy" / "torch": device memory of that library

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize

    def overlaps(self, other: "Buffer") -> bool:
        return (
            self.nbytes > 0
            and other.nbytes > 0
            and self.ptr < other.ptr + other.nbytes
            and other.ptr < self.ptr + self.nbytes
        )


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _unsupported_dtype(what: str, dtype: str) -> TypeError:
    return TypeError(f"{what} has dtype {dtype}, which plexus does not support; supported: {', '.join(_C.DTYPES)}")


def as_buffer(x: Any, what: str, *, writable: bool) -> Buffer:
    """A Buffer over `x`. `what` names the call, the rank and the argument in error messages."""
    if _is_torch_tensor(x):
        return _torch_buffer(x, what, writable)
    if not isinstance(x, np.ndarray):
        if getattr(_DEVICE_OK, "on", False) and _device_kind(x):
            return _device_buffer(x, what, writable)
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    dtype = x.dtype
    name = _NUMPY_DTYPE_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_DTYPE_NAMES[dtype] = dtype.name
    if name not in DTYPE_CODES:
        raise _unsupported_dtype(what, name)
    if not dtype.isnative:
        raise TypeError(f"{what} has non-native byte order ({dtype.str}); convert it with "
                        "x.astype(x.dtype.newbyteorder('='))")
    flags = x.flags
    if not flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not flags.writeable:
        raise ValueError(f"{what} is read-only but receives the result")
    return Buffer(x, _C.array_address(x), x.size, name, dtype.itemsize)


def _torch_buffer(t: Any, what: str, writable: bool) -> Buffer:
    name = str(t.dtype).replace("torch.", "")
    if name not in DTYPE_CODES:
        raise _unsupported_dtype(what, name)
    if t.layout != sys.modules["torch"].strided:
        raise TypeError(f"{what} is not a dense tensor")
    if t.device.type != "cpu":
        if t.is_cuda and getattr(_DEVICE_OK, "on", False):
            return _device_buffer(t, what, writable)
        raise TypeError(f"{what} is on device {t.device}; this plexus build handles CPU tensors only")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous (use tensor.contiguous())")
    return Buffer(t, t.data_ptr(), t.numel(), name, t.element_size())


def _device_kind(x: Any) -> Optional[str]:
    from ._device import device_kind  # device arrays are rare: keep the import off the host path

    return device_kind(x)


def _device_buffer(x: Any, what: str, writable: bool) -> Buffer:
    from ._device import describe

    a = describe(x, what)
    if writable and a.readonly:
        raise ValueError(f"{what} is read-only but receives the result")
    return Buffer(x, a.ptr, a.nbytes // a.itemsize, a.dtype, a.itemsize, a.kind)


def same_kind(where: str, a: Buffer, b: Buffer, what_b: str, what_a: str) -> None:
    """Raises TypeError when two buffers of one call have different dtypes, or one is in device
    memory and the other is not."""
    if a.dtype != b.dtype:
        raise TypeError(f"{where}: {what_b} has dtype {b.dtype} but {what_a} has dtype {a.dtype}")
    if a.device != b.device:
        raise TypeError(f"{where}: {what_b} and {what_a} must both be device arrays or both host arrays")


def rows_of(shape: Sequence[int]) -> Tuple[int, int]:
    """(rows along dim 0, elements per row), as all_to_all_single splits an array."""
    if len(shape) == 0:
        return 1, 1
    per_row = 1
    for d in shape[1:]:
        per_row *= int(d)
    return int(shape[0]), per_row


def split_counts(where: str, name: str, shape: Sequence[int], splits: Optional[Sequence[int]], n: int) -> List[int]:
    """Element counts per rank from torch's row split sizes (None or []: an even split)."""
    r, per_row = rows_of(shape)
    if splits is None or len(splits) == 0:
        if r % n:
            raise ValueError(f"{where}: {name} has {r} rows along dim 0, which do not split evenly over {n} "
                             "ranks; pass split sizes")
        return [r // n * per_row] * n
    splits = [int(s) for s in splits]
    if len(splits) != n or any(s < 0 for s in splits):
        raise ValueError(f"{where}: {name}_split_sizes must be {n} non-negative numbers, got {splits}")
    if sum(splits) != r:
        raise ValueError(f"{where}: {name}_split_sizes add up to {sum(splits)} rows but {name} has {r}")
    return [s * per_row for s in splits]


def check_disjoint(where: str, outs: Sequence[Any], out_name: str, ins: Sequence[Any], in_name: str) -> None:
    """ValueError when two outputs, or an output and an input, share memory (buffers with overlaps())."""
    for i, o in enumerate(outs):
        for j, other in enumerate(outs[i + 1:], i + 1):
            if o.overlaps(other):
                raise ValueError(f"{where}: {out_name}[{i}] and {out_name}[{j}] share memory")
        for j, b in enumerate(ins):
            if o.overlaps(b):
                raise ValueError(f"{where}: {out_name}[{i}] shares memory with {in_name}[{j}]")
