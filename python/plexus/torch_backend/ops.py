"""torch -> plexus translation: reduce ops, and tensors as raw buffers for the core.

A tensor reaches the core zero-copy, as (address, element count, dtype code): it must be a
dense, contiguous CPU tensor, or a CUDA tensor inside _arrays.device_buffers() (the CUDA IPC
path of cuda.py; otherwise CUDA tensors are refused here and staged there). Every error names the call and the argument, so a bad call fails
on the spot (TypeError/ValueError) on the rank that made it.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.distributed as dist

from .. import _C, _arrays

# Devices whose tensors the core moves zero-copy; CUDA tensors go through cuda.py.
SUPPORTED_DEVICES = ("cpu",)

_CODE = {name: code for code, name in enumerate(_C.DTYPES)}
_OP = {name.upper(): code for code, name in enumerate(_C.OPS)}
_RT = dist.ReduceOp.RedOpType
_OP_BY_TYPE = {
    _RT.SUM: _OP["SUM"],
    _RT.AVG: _OP["AVG"],
    _RT.PRODUCT: _OP["PRODUCT"],
    _RT.MIN: _OP["MIN"],
    _RT.MAX: _OP["MAX"],
    _RT.BAND: _OP["BAND"],
    _RT.BOR: _OP["BOR"],
    _RT.BXOR: _OP["BXOR"],
    _RT.PREMUL_SUM: _OP["PREMUL_SUM"],
}
_OP_BY_VALUE = {int(k.value): v for k, v in _OP_BY_TYPE.items()}
SUM = _OP["SUM"]
PREMUL_SUM = _OP["PREMUL_SUM"]
# Ops that stay elementwise on the real and imaginary parts of a complex tensor.
_COMPLEX_OK = {_OP["SUM"], _OP["AVG"], _OP["PREMUL_SUM"]}

# How a dtype crosses: "native" (the core knows it), "complex" (as its real view, twice the
# elements), or "bytes" (data movement only: no reduction; int16, uint16/32/64, float8...).
_NATIVE = {getattr(torch, name): _CODE[name] for name in _C.DTYPES}
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}
_UINT8 = _CODE["uint8"]


class Buffer:
    """A tensor seen by the core: address, element count, dtype code (and bytes per element)."""

    __slots__ = ("tensor", "ptr", "count", "code", "itemsize", "device")

    def __init__(self, tensor: torch.Tensor, ptr: int, count: int, code: int, itemsize: int):
        self.tensor = tensor  # kept alive while the op runs
        self.ptr = ptr
        self.count = count
        self.code = code
        self.itemsize = itemsize
        self.device = "torch" if tensor.is_cuda else None  # as plexus._arrays.Buffer says it

    @property
    def obj(self) -> torch.Tensor:
        return self.tensor

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize

    def overlaps(self, other: "Buffer") -> bool:
        return (self.nbytes > 0 and other.nbytes > 0 and self.ptr < other.ptr + other.nbytes
                and other.ptr < self.ptr + self.nbytes)


def _check_tensor(t: torch.Tensor, what: str) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{what} is a {t.layout} tensor; plexus needs dense (strided) tensors")
    if not t.is_cpu and t.device.type not in SUPPORTED_DEVICES:  # is_cpu: the fast test
        if t.is_cuda:
            if _arrays.device_buffers_on():
                if not t.is_contiguous():
                    raise ValueError(f"{what} must be contiguous (use tensor.contiguous())")
                return
            # cuda.on_cuda catches this and stages the call (never seen by users of the group).
            raise TypeError(f"{what} is on {t.device}: the zero-copy path takes CPU tensors")
        raise TypeError(f"{what} is on {t.device}; the plexus torch backend handles CPU tensors only")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous (use tensor.contiguous())")


def buffer(t: Any, what: str, reduce_op: int = -1) -> Buffer:
    """The Buffer of tensor `t`; `reduce_op` >= 0 when the call reduces (which limits dtypes)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    _check_tensor(t, what)
    code = _NATIVE.get(t.dtype)
    if code is not None:
        return Buffer(t, t.data_ptr(), t.numel(), code, t.element_size())
    real = _COMPLEX.get(t.dtype)
    if real is not None:
        if reduce_op >= 0 and reduce_op not in _COMPLEX_OK:
            raise TypeError(f"{what}: a complex tensor ({t.dtype}) can only be reduced with SUM, AVG or "
                            f"PREMUL_SUM, not {_C.OPS[reduce_op].upper()}")
        return Buffer(t, t.data_ptr(), t.numel() * 2, _NATIVE[real], t.element_size() // 2)
    if reduce_op >= 0:
        supported = ", ".join(list(_C.DTYPES) + ["complex64", "complex128"])
        raise TypeError(f"{what} has dtype {t.dtype}, which plexus cannot reduce; supported: {supported}")
    # Data movement only: the bytes, whatever they mean.
    return Buffer(t, t.data_ptr(), t.numel() * t.element_size(), _UINT8, 1)


def one(tensors: Any, call: str, argname: str = "tensors") -> torch.Tensor:
    """The single tensor of a `tensors` list (torch passes one tensor per process)."""
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 1:
        n = len(tensors) if isinstance(tensors, (list, tuple)) else type(tensors).__name__
        raise ValueError(f"{call}: {argname} must hold exactly one tensor, got {n} (plexus runs one tensor per "
                         "process per call)")
    return tensors[0]


def same_dtype(where: str, ref: torch.Tensor, t: torch.Tensor, what: str, what_ref: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{where}: {what} has dtype {t.dtype} but {what_ref} has dtype {ref.dtype}")


def buffers(tensors: Any, argname: str, where: str, n: int, ref: torch.Tensor, ref_name: str,
            reduce_op: int = -1) -> List[Buffer]:
    """Buffers of a list of `n` tensors, each of `ref`'s dtype and element count."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{where}: {argname} must be a list of {n} tensors, got {type(tensors).__name__}")
    if len(tensors) != n:
        raise ValueError(f"{where}: {argname} has {len(tensors)} tensors but the group has {n} ranks")
    out = []
    numel = ref.numel()
    for i, t in enumerate(tensors):
        b = buffer(t, f"{where}: {argname}[{i}]", reduce_op)
        same_dtype(where, ref, t, f"{argname}[{i}]", ref_name)
        if t.numel() != numel:
            raise ValueError(f"{where}: {argname}[{i}] has {t.numel()} elements but {ref_name} has {numel}")
        out.append(b)
    return out


def reduce_op(op: Any, where: str) -> Tuple[int, float]:
    """(plexus op code, premul factor) of torch's opts.reduceOp (a ReduceOp, or a RedOpType)."""
    kind = getattr(op, "op", op)
    code = _OP_BY_VALUE.get(getattr(kind, "value", None))  # ints hash faster than pybind enums
    if code is None:
        raise ValueError(f"{where}: unsupported reduce op {op!r}")
    if code != PREMUL_SUM:
        return code, 1.0
    factor = op.factor  # a float, or a 1-element tensor (torch's _make_nccl_premul_sum)
    if isinstance(factor, torch.Tensor):
        if factor.numel() != 1:
            raise ValueError(f"{where}: PREMUL_SUM factor must be a scalar or a 1-element tensor, "
                             f"got shape {tuple(factor.shape)}")
        factor = factor.item()
    return code, float(factor)


def check_op_dtype(where: str, code: int, buf: Buffer) -> None:
    """TypeError now, on this rank, when the op cannot reduce the dtype (e.g. AVG on ints)."""
    problem = _C.op_dtype_problem(code, buf.code)
    if problem:
        raise TypeError(f"{where}: {problem}")


def split_counts(where: str, name: str, t: torch.Tensor, splits: Any, n: int) -> List[int]:
    """Element counts per rank from torch's row split sizes ([] or None: even split)."""
    return _arrays.split_counts(where, name, tuple(t.shape), splits, n)
