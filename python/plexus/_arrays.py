"""Array adapters: numpy arrays, torch tensors (CPU and CUDA) and device arrays (cupy, anything
with __cuda_array_interface__) seen as one Buffer (address, element count, dtype, device) that
the collective layer (plexus._collectives) checks and runs.

Every check names the argument and the rank, so a bad call fails on the spot with a clear
TypeError/ValueError instead of corrupting memory or hanging the other ranks.
"""

from __future__ import annotations

import math
import sys
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _C
from .device.arrays import describe, device_kind

DTYPE_CODES = {name: code for code, name in enumerate(_C.DTYPES)}
_UINT8 = DTYPE_CODES["uint8"]
_OP_NAMES = [name.upper() for name in _C.OPS]
# Ops that stay elementwise on the real and imaginary parts of a complex tensor.
_COMPLEX_OK = {_C.OPS.index(name) for name in ("sum", "avg", "premul_sum")}
# numpy dtype object -> its name, filled as dtypes are seen (dtype.name is slow to compute).
_NUMPY_DTYPE_NAMES: dict = {}


class Buffer:
    """A contiguous array seen as raw memory. `ptr`, `count`, `code` and `itemsize` are what the
    core moves (a complex tensor is its real view: twice the elements); `dtype` is the array's own
    dtype name and `numel` its element count, for messages and checks; `device` is None for host
    memory, else the library whose streams and copies serve it ("cupy" or "torch")."""

    __slots__ = ("obj", "ptr", "count", "code", "itemsize", "dtype", "device", "_shape")

    def __init__(self, obj: Any, ptr: int, count: int, code: int, itemsize: int, dtype: str,
                 device: Optional[str] = None, shape: Optional[tuple] = None):
        self.obj = obj  # the array itself, kept alive while an op uses it
        self.ptr = ptr
        self.count = count
        self.code = code
        self.itemsize = itemsize
        self.dtype = dtype
        self.device = device
        self._shape = shape  # None: the array's own .shape (asked only when needed)

    @property
    def shape(self) -> tuple:
        return tuple(self.obj.shape) if self._shape is None else self._shape

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def overlaps(self, other: "Buffer") -> bool:
        return (
            self.nbytes > 0
            and other.nbytes > 0
            and self.ptr < other.ptr + other.nbytes
            and other.ptr < self.ptr + self.nbytes
        )


def _unsupported_dtype(what: str, dtype: str) -> TypeError:
    return TypeError(f"{what} has dtype {dtype}, which plexus does not support; supported: {', '.join(_C.DTYPES)}")


def as_buffer(x: Any, what: str, writable: bool, reduce_op: int = -1, torch_dtypes: bool = False) -> Buffer:
    """A Buffer over `x`. `what` names the call, the rank and the argument in error messages;
    `writable`: the call writes it (read-only numpy and CAI arrays are refused; torch tensors
    have no such flag). As it is, the numpy API's converter (plexus._collectives).

    With `torch_dtypes` (the torch backend), torch tensors of any dtype are taken as torch's own
    backends take them: complex as its real view (reductions: SUM, AVG, PREMUL_SUM only), dtypes
    the core cannot reduce (int16, uint16, float8, ...) as bytes when the call does not reduce
    (`reduce_op` < 0)."""
    if type(x) is np.ndarray:
        return _numpy_buffer(x, what, writable)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch_buffer(torch, x, what, torch_dtypes, reduce_op)
    if isinstance(x, np.ndarray):
        return _numpy_buffer(x, what, writable)
    if device_kind(x) is not None:
        a = describe(x, what)
        if writable and a.readonly:
            raise ValueError(f"{what} is read-only but receives the result")
        return Buffer(x, a.ptr, a.nbytes // a.itemsize, DTYPE_CODES[a.dtype], a.itemsize, a.dtype, a.kind, a.shape)
    raise TypeError(f"{what} must be a numpy array, a torch tensor or a device array (cupy), got {type(x).__name__}")


def _numpy_buffer(x: np.ndarray, what: str, writable: bool) -> Buffer:
    dtype = x.dtype
    name = _NUMPY_DTYPE_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_DTYPE_NAMES[dtype] = dtype.name
    code = DTYPE_CODES.get(name)
    if code is None:
        raise _unsupported_dtype(what, name)
    if not dtype.isnative:
        raise TypeError(f"{what} has non-native byte order ({dtype.str}); convert it with "
                        "x.astype(x.dtype.newbyteorder('='))")
    flags = x.flags
    if not flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not flags.writeable:
        raise ValueError(f"{what} is read-only but receives the result")
    return Buffer(x, _C.array_address(x), x.size, code, dtype.itemsize, name)


_COMPLEX_PARTS = {"complex64": "float32", "complex128": "float64", "complex32": "float16"}
# torch dtype -> (name, core dtype code or None, itemsize, elements per tensor element):
# native dtypes 1 element, complex 2 (its real view), the rest None (bytes, or refused).
_TORCH_DTYPES: dict = {}


def _torch_dtype(dtype: Any) -> tuple:
    name = str(dtype)[6:]  # "torch.float32" -> "float32"
    itemsize = dtype.itemsize
    if name in DTYPE_CODES:
        return name, DTYPE_CODES[name], itemsize, 1
    part = _COMPLEX_PARTS.get(name)
    if part is not None:
        return name, DTYPE_CODES[part], itemsize // 2, 2
    return name, None, itemsize, 0


def torch_buffer(torch: Any, t: Any, what: str, torch_dtypes: bool, reduce_op: int) -> Buffer:
    """as_buffer() of torch tensor `t` (`torch`: the module)."""
    if t.layout != torch.strided:
        raise TypeError(f"{what} is a {t.layout} tensor; plexus needs dense (strided) tensors")
    if t.is_cpu:
        device = None
    elif t.is_cuda:
        device = "torch"
    else:
        raise TypeError(f"{what} is on device {t.device}; plexus takes CPU and CUDA tensors")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous (use tensor.contiguous())")
    info = _TORCH_DTYPES.get(t.dtype)
    if info is None:
        info = _TORCH_DTYPES[t.dtype] = _torch_dtype(t.dtype)
    name, code, itemsize, per = info
    if per == 1:
        return Buffer(t, t.data_ptr(), t.numel(), code, itemsize, name, device)
    if not torch_dtypes:
        raise _unsupported_dtype(what, name)
    if per == 2:
        if reduce_op >= 0 and reduce_op not in _COMPLEX_OK:
            raise TypeError(f"{what}: a complex tensor ({t.dtype}) can only be reduced with SUM, AVG or "
                            f"PREMUL_SUM, not {_OP_NAMES[reduce_op]}")
        return Buffer(t, t.data_ptr(), t.numel() * 2, code, itemsize, name, device)
    if reduce_op >= 0:
        supported = ", ".join(list(_C.DTYPES) + ["complex64", "complex128"])
        raise TypeError(f"{what} has dtype {t.dtype}, which plexus cannot reduce; supported: {supported}")
    # Data movement only: the bytes, whatever they mean.
    return Buffer(t, t.data_ptr(), t.numel() * itemsize, _UINT8, 1, name, device)


def same_kind(where: str, a: Buffer, b: Buffer, what_b: str, what_a: str) -> None:
    """Raises TypeError when two buffers of one call have different dtypes, or one is in device
    memory and the other is not."""
    if a.dtype != b.dtype:
        raise TypeError(f"{where}: {what_b} has dtype {b.dtype} but {what_a} has dtype {a.dtype}")
    if a.device != b.device:
        if a.device and b.device:
            raise TypeError(f"{where}: {what_b} is a {b.device} array but {what_a} is a {a.device} array: pass "
                            "arrays of one library")
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
