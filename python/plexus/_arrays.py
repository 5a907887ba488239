"""Turns user arrays (numpy, torch CPU tensors) into raw buffer views for the C++ core.

Every check names the argument and the rank, so a bad call fails on the spot with a clear
TypeError/ValueError instead of corrupting memory or hanging the other ranks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from . import _C

DTYPE_CODES = {name: code for code, name in enumerate(_C.DTYPES)}


@dataclass(frozen=True)
class Buffer:
    obj: Any  # the array itself, kept alive while an op uses it
    ptr: int
    count: int
    dtype: str
    itemsize: int

    @property
    def code(self) -> int:
        return DTYPE_CODES[self.dtype]

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
    """A Buffer over `x`. `what` names the argument and rank in error messages."""
    if _is_torch_tensor(x):
        return _torch_buffer(x, what, writable)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        raise TypeError(f"{what} must be a numpy array or a torch tensor") from None
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")
    name = x.dtype.name
    if name not in DTYPE_CODES:
        raise _unsupported_dtype(what, name)
    if not x.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not x.flags.writeable:
        raise ValueError(f"{what} is read-only but receives the result")
    return Buffer(x, x.__array_interface__["data"][0], x.size, name, x.dtype.itemsize)


def _torch_buffer(t: Any, what: str, writable: bool) -> Buffer:
    name = str(t.dtype).replace("torch.", "")
    if name not in DTYPE_CODES:
        raise _unsupported_dtype(what, name)
    if t.layout != sys.modules["torch"].strided:
        raise TypeError(f"{what} is not a dense tensor")
    if t.device.type != "cpu":
        raise TypeError(f"{what} is on device {t.device}; this plexus build handles CPU tensors only")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous (use tensor.contiguous())")
    return Buffer(t, t.data_ptr(), t.numel(), name, t.element_size())


def same_kind(a: Buffer, b: Buffer, what_b: str, what_a: str) -> None:
    """Raises TypeError when two buffers of one call have different dtypes."""
    if a.dtype != b.dtype:
        raise TypeError(f"{what_b} has dtype {b.dtype} but {what_a} has dtype {a.dtype}")
