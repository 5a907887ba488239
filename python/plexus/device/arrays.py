"""What a device array is: a torch CUDA tensor, a cupy array, or any object with
__cuda_array_interface__ (CAI), and its address, size, dtype and shape (describe)."""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import numpy as np

from .. import _C

# __cuda_array_interface__ typestr (without byte order) -> plexus dtype name.
TYPESTRS = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "u1": "uint8",
            "i4": "int32", "i8": "int64", "b1": "bool"}


_NUMPY_NAMES = {np.dtype(name if name != "bool" else np.bool_): name for name in TYPESTRS.values()}


def device_kind(x: Any) -> Optional[str]:
    """'torch' for a torch CUDA tensor, 'cupy' for a cupy array or any other object with
    __cuda_array_interface__, None for everything else (numpy arrays, CPU tensors, ...)."""
    if type(x) is np.ndarray or x is None:  # the common case, first
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch" if x.is_cuda else None
    cupy = sys.modules.get("cupy")
    if cupy is not None and type(x) is cupy.ndarray:  # without building its CAI dict
        return "cupy"
    try:
        return "cupy" if hasattr(x, "__cuda_array_interface__") else None
    except Exception:  # noqa: BLE001 - a property that raises something else: not a device array
        return None


class DeviceArray:
    """One CAI array as the collective layer sees it; `kind`: the library that serves its
    streams and copies (cupy, for any CAI object)."""

    __slots__ = ("kind", "ptr", "nbytes", "dtype", "shape", "readonly", "itemsize")

    def __init__(self, kind, ptr, nbytes, dtype, shape, readonly, itemsize):
        self.kind, self.ptr, self.nbytes, self.dtype = kind, ptr, nbytes, dtype
        self.shape, self.readonly, self.itemsize = shape, readonly, itemsize


def _c_contiguous(shape: tuple, strides: Optional[tuple], itemsize: int) -> bool:
    if strides is None or 0 in shape:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _unsupported(name: str, dtype: str) -> TypeError:
    return TypeError(f"{name} has dtype {dtype}, which plexus does not support; supported: {', '.join(_C.DTYPES)}")


def describe(x: Any, name: str) -> DeviceArray:
    """Address, size, dtype and shape of an array with __cuda_array_interface__; TypeError /
    ValueError naming `name` when plexus cannot use it (dtype, layout). Torch tensors are
    described by plexus._arrays, which also knows their CPU side."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and type(x) is cupy.ndarray:  # its attributes cost less than its CAI dict
        dtype = _NUMPY_NAMES.get(x.dtype)
        if dtype is None:
            raise _unsupported(name, str(x.dtype))
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (use cupy.ascontiguousarray)")
        return DeviceArray("cupy", x.data.ptr, x.nbytes, dtype, x.shape, False, x.itemsize)
    cai = x.__cuda_array_interface__
    typestr = cai["typestr"]
    dtype = TYPESTRS.get(typestr[1:]) if typestr[:1] in "<|=" else None
    if dtype is None:
        raise _unsupported(name, typestr)
    if cai.get("mask") is not None:
        raise ValueError(f"{name} is a masked array")
    shape = tuple(int(d) for d in cai["shape"])
    itemsize = int(typestr[2:])
    strides = cai.get("strides")
    if not _c_contiguous(shape, None if strides is None else tuple(strides), itemsize):
        raise ValueError(f"{name} must be C-contiguous (use cupy.ascontiguousarray)")
    ptr, readonly = cai["data"]
    return DeviceArray("cupy", int(ptr), math.prod(shape) * itemsize, dtype, shape, bool(readonly), itemsize)
