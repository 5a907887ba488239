"""ReduceOp with torch.distributed's names; PREMUL_SUM carries its factor."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _C

_CODES = {name.upper(): code for code, name in enumerate(_C.OPS)}


class ReduceOp:
    """A reduction operator: ReduceOp.SUM, PRODUCT, MIN, MAX, AVG, BAND, BOR, BXOR, or
    ReduceOp.premul_sum(factor) (sum of inputs each multiplied by `factor`)."""

    SUM: "ReduceOp"
    PRODUCT: "ReduceOp"
    MIN: "ReduceOp"
    MAX: "ReduceOp"
    AVG: "ReduceOp"
    BAND: "ReduceOp"
    BOR: "ReduceOp"
    BXOR: "ReduceOp"
    PREMUL_SUM: "ReduceOp"

    __slots__ = ("name", "code", "factor")

    def __init__(self, name: str, factor: Optional[float] = None):
        name = name.upper()
        if name not in _CODES:
            raise ValueError(f"unknown reduction op {name!r}; known: {', '.join(_CODES)}")
        self.name = name
        self.code = _CODES[name]
        self.factor = factor

    @staticmethod
    def premul_sum(factor: float) -> "ReduceOp":
        return ReduceOp("PREMUL_SUM", float(factor))

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ReduceOp) and (self.name, self.factor) == (other.name, other.factor)

    def __hash__(self) -> int:
        return hash((self.name, self.factor))

    def __repr__(self) -> str:
        if self.name == "PREMUL_SUM" and self.factor is not None:
            return f"ReduceOp.premul_sum({self.factor})"
        return f"ReduceOp.{self.name}"


for _name in _CODES:
    setattr(ReduceOp, _name, ReduceOp(_name))


_CHECKED: dict = {}  # (op code, dtype code) -> why they do not fit ("" when they do)


def check_op(where: str, code: int, buf: Any) -> None:
    """TypeError now, on this rank, when op `code` cannot reduce the dtype of `buf` (e.g. AVG on
    ints), before anything is sent."""
    key = (code, buf.code)
    problem = _CHECKED.get(key)
    if problem is None:
        problem = _CHECKED[key] = _C.op_dtype_problem(code, buf.code)
    if problem:
        raise TypeError(f"{where}: {problem}")


def op_code(op: Any, what: str) -> Tuple[int, float]:
    """(op code, premul factor) of a ReduceOp, an op name string, or torch's ReduceOp."""
    if op is ReduceOp.SUM:  # the common case, first
        return _CODES["SUM"], 1.0
    factor = None
    if isinstance(op, ReduceOp):
        name, factor = op.name, op.factor
    elif isinstance(op, str):
        name = op.upper()
    else:
        # torch.distributed.ReduceOp / RedOpType: their str() ends with the op's name.
        name = str(getattr(op, "name", op)).rsplit(".", 1)[-1].upper()
    if name == "PRODUCT" or name == "PROD":
        name = "PRODUCT"
    if name not in _CODES:
        raise ValueError(f"{what}: unknown reduction op {op!r}")
    if name == "PREMUL_SUM":
        if factor is None:
            raise ValueError(f"{what}: PREMUL_SUM needs a factor; use ReduceOp.premul_sum(factor)")
        return _CODES[name], float(factor)
    return _CODES[name], 1.0
