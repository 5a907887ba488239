"""torch -> plexus translation: torch's reduce ops, and torch tensors as the collective layer's
buffers (plexus._arrays.as_buffer with torch's dtype coverage).

A tensor reaches the core zero-copy, as (address, element count, dtype code): a dense,
contiguous CPU or CUDA tensor of any dtype (complex as its real view; dtypes the core cannot
reduce as bytes, for calls that do not reduce). Every error names the call and the argument, so
a bad call fails on the spot (TypeError/ValueError) on the rank that made it.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.distributed as dist

from .. import _C
from .._arrays import Buffer, torch_buffer

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


def converter(t: Any, what: str, writable: bool, reduce_op: int = -1) -> Buffer:
    """The Buffer of tensor `t`, as the collective layer asks its converter; `reduce_op` >= 0
    when the call reduces (which limits dtypes). Torch tensors have no read-only flag."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    return torch_buffer(torch, t, what, True, reduce_op)


def buffer(t: Any, what: str, reduce_op: int = -1) -> Buffer:
    """The Buffer of tensor `t`; `reduce_op` >= 0 when the call reduces (which limits dtypes)."""
    return converter(t, what, True, reduce_op)


def one(tensors: Any, call: str, argname: str = "tensors") -> torch.Tensor:
    """The single tensor of a `tensors` list (torch passes one tensor per process)."""
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 1:
        n = len(tensors) if isinstance(tensors, (list, tuple)) else type(tensors).__name__
        raise ValueError(f"{call}: {argname} must hold exactly one tensor, got {n} (plexus runs one tensor per "
                         "process per call)")
    return tensors[0]


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
