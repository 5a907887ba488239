"""Deterministic inputs and the exact check of results.

Every element is a small integer drawn from a hash of (rank, index), so every dtype holds it
exactly (bfloat16 is exact up to 256) and sums, products, minima and maxima over the ranks are
exact too: the check compares for equality (avg, which divides, gets a few ulps). Values are
made and checked in chunks, so checking a 64M buffer needs little extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

CHUNK = 1 << 20  # elements per chunk when making or checking values

# canonical name -> (aliases, name printed in the table as nccl-tests does)
DTYPES = {
    "float32": (("float", "fp32", "f32"), "float"),
    "float16": (("half", "fp16", "f16"), "half"),
    "bfloat16": (("bf16",), "bfloat16"),
    "float64": (("double", "fp64", "f64"), "double"),
    "int32": (("int",), "int32"),
    "int64": ((), "int64"),
    "int8": (("char",), "int8"),
    "uint8": ((), "uint8"),
}

OPS = ("sum", "prod", "min", "max", "avg")


def canonical_dtype(name: str) -> str:
    name = name.lower()
    for canon, (aliases, _) in DTYPES.items():
        if name == canon or name in aliases:
            return canon
    raise ValueError(f"unknown datatype {name!r}; use one of: " + ", ".join(
        f"{c} ({'/'.join(a)})" if a else c for c, (a, _) in DTYPES.items()))


def printed_dtype(canon: str) -> str:
    return DTYPES[canon][1]


def np_dtype(canon: str) -> np.dtype:
    if canon == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise RuntimeError("datatype bfloat16 needs the ml_dtypes package: pip install ml_dtypes") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(canon)


def is_floating(canon: str) -> bool:
    return canon.startswith(("float", "bfloat"))


# --- where expected values come from ----------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """Elements start, start+1, ... of rank `rank`'s input."""
    rank: int
    start: int


@dataclass(frozen=True)
class Reduced:
    """Elements start, start+1, ... of the inputs of all ranks, reduced with the op."""
    start: int


Source = object  # Input | Reduced


def _hash(rank: int, index: np.ndarray) -> np.ndarray:
    # A cheap integer mix (uint64 arithmetic wraps): neighbouring elements and ranks differ, so
    # a block landing in the wrong place or an element off by one is caught.
    h = (index + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((rank + 1) * 0x85EBCA6B)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return h


def _avg_base(index: np.ndarray) -> np.ndarray:
    return (_hash(0, index) % np.uint64(4)).astype(np.int64) + 1


def values(op: Optional[str], rank: int, n: int, start: int, count: int) -> np.ndarray:
    """Rank `rank`'s input elements [start, start+count) as exact int64 values. `op` is the
    reduction the collective runs (None for data movement): it picks a range where the
    reduction over n ranks stays exact."""
    index = np.arange(start, start + count, dtype=np.uint64)
    if op == "avg":
        # Ranks hold base+1, base-1, base+1, base-1, ... (base on the last of an odd count), so
        # the average is exactly base.
        c = 0 if (rank % 2 == 0 and rank + 1 == n) else (1 if rank % 2 == 0 else -1)
        return _avg_base(index) + c
    h = _hash(rank, index)
    if op == "sum":
        return (h % np.uint64(4)).astype(np.int64)
    if op == "prod":
        return 1 + (h % np.uint64(8) == 0).astype(np.int64)  # a few 2s, mostly 1s
    if op in ("min", "max"):
        return (h % np.uint64(11)).astype(np.int64)
    return (h % np.uint64(64)).astype(np.int64)


def reduced(op: str, n: int, start: int, count: int) -> np.ndarray:
    """The reduction over all n ranks of elements [start, start+count), exact, as int64."""
    if op == "avg":
        return _avg_base(np.arange(start, start + count, dtype=np.uint64))
    acc = values(op, 0, n, start, count)
    for r in range(1, n):
        v = values(op, r, n, start, count)
        if op == "sum":
            acc += v
        elif op == "prod":
            acc *= v
        elif op == "min":
            np.minimum(acc, v, out=acc)
        elif op == "max":
            np.maximum(acc, v, out=acc)
        else:
            raise ValueError(f"unknown op {op!r}")
    return acc


def _as_dtype(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # int64 -> int8/uint8 wraps around, as the reduction kernels' integer overflow does.
    if dtype.kind in "iu":
        return v.astype(dtype)
    return v.astype(np.float64).astype(dtype)


def fill(arr: np.ndarray, op: Optional[str], rank: int, n: int) -> None:
    """Writes rank `rank`'s input into `arr` (its elements 0, 1, ...)."""
    for a in range(0, arr.size, CHUNK):
        m = min(CHUNK, arr.size - a)
        arr[a:a + m] = _as_dtype(values(op, rank, n, a, m), arr.dtype)


def poison(arr: np.ndarray) -> None:
    """Fills an output buffer with a value no result holds (results are >= 0), so an output
    that a collective never wrote is counted wrong."""
    arr[...] = 255 if arr.dtype.kind == "u" else -1


def _source_values(src: Source, op: Optional[str], n: int, offset: int, count: int) -> np.ndarray:
    if isinstance(src, Input):
        return values(op, src.rank, n, src.start + offset, count)
    if isinstance(src, Reduced):
        return reduced(op, n, src.start + offset, count)
    raise TypeError(src)


_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23, "float64": 2.0 ** -52}


def _mismatches(got: np.ndarray, want: np.ndarray, op: Optional[str]) -> int:
    if got.dtype.kind in "iu":
        return int(np.count_nonzero(got != want))
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    if op == "avg":
        # avg divides (or multiplies by 1/n): allow a few units in the last place.
        eps = _EPS[got.dtype.name]
        return int(np.count_nonzero(~(np.abs(g - w) <= 4 * eps * np.abs(w))))
    return int(np.count_nonzero(g != w))  # NaN is never equal: counted wrong


def expected(segments: List[Tuple[int, int, Source]], op: Optional[str], n: int, dtype: np.dtype, size: int) -> Optional[np.ndarray]:
    """The array a result of `size` elements must equal, or None when there is nothing to check."""
    if not segments:
        return None
    want = np.empty(size, dtype=dtype)
    poison(want)
    for dst, length, src in segments:
        for a in range(0, length, CHUNK):
            m = min(CHUNK, length - a)
            want[dst + a:dst + a + m] = _as_dtype(_source_values(src, op, n, a, m), dtype)
    return want


def count_wrong(result: Optional[np.ndarray], want: Optional[np.ndarray], op: Optional[str]) -> int:
    """Number of elements of `result` that differ from `want`."""
    if want is None:
        return 0
    if result is None or result.shape != want.shape:
        return int(want.size)
    wrong = 0
    for a in range(0, want.size, CHUNK):
        wrong += _mismatches(result[a:a + CHUNK], want[a:a + CHUNK], op)
    return wrong
