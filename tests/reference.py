"""Deterministic test inputs and numpy reference results for every dtype and op.

Every rank can build every other rank's input from (case, rank), so each rank checks its own
result against numpy without any extra communication. Values are small integers (or exact
binary fractions) so that float sums and products are exact in every dtype and any order.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    BFLOAT16 = None

import plexus

FLOATS = ["float16", "bfloat16", "float32", "float64"]
INTS = ["int8", "uint8", "int32", "int64"]
DTYPES = FLOATS + INTS + ["bool"]
OPS = ["SUM", "PRODUCT", "MIN", "MAX", "AVG", "BAND", "BOR", "BXOR", "PREMUL_SUM"]
COUNTS = [0, 1, 7, 1000, 2**20 + 3]
PREMUL_FACTOR = 0.5


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        if BFLOAT16 is None:
            raise RuntimeError("bfloat16 tests need ml_dtypes")
        return BFLOAT16
    return np.dtype(name)


def valid(op: str, dtype: str) -> bool:
    if op in ("AVG", "PREMUL_SUM"):
        return dtype in FLOATS
    if op in ("BAND", "BOR", "BXOR"):
        return dtype not in FLOATS
    return True


def plexus_op(op: str):
    if op == "PREMUL_SUM":
        return plexus.ReduceOp.premul_sum(PREMUL_FACTOR)
    return getattr(plexus.ReduceOp, op)


def make_input(case: str, rank: int, count: int, dtype: str, op: str = "SUM") -> np.ndarray:
    seed = zlib.crc32(f"{case}/{rank}".encode())
    rng = np.random.default_rng(seed)
    dt = np_dtype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, count).astype(bool)
    if op == "PRODUCT":
        # Products of a few of these stay exact (and in range) in every dtype.
        choices = [1, 2, 3] if dtype == "uint8" else [-2, -1, 1, 2]
        return rng.choice(choices, count).astype(dt)
    if dtype in ("int8", "uint8", "int32", "int64") and op in ("SUM", "BAND", "BOR", "BXOR", "MIN", "MAX"):
        info = np.iinfo(dt)
        # Full range: sums wrap around exactly as numpy's do.
        return rng.integers(info.min, int(info.max) + 1, count, dtype=dt)
    return rng.integers(-3, 4, count).astype(dt)


_NP_OPS = {
    "SUM": np.add,
    "PRODUCT": np.multiply,
    "MIN": np.minimum,
    "MAX": np.maximum,
    "BAND": np.bitwise_and,
    "BOR": np.bitwise_or,
    "BXOR": np.bitwise_xor,
}


def reduce_ref(inputs, op: str, dtype: str) -> np.ndarray:
    dt = np_dtype(dtype)
    if op == "AVG":
        total = functools.reduce(np.add, [x.astype(np.float64) for x in inputs])
        return (total / len(inputs)).astype(dt)
    if op == "PREMUL_SUM":
        scaled = [(x.astype(np.float64) * PREMUL_FACTOR).astype(dt) for x in inputs]
        return functools.reduce(np.add, scaled).astype(dt)
    return functools.reduce(_NP_OPS[op], inputs).astype(dt)


def assert_equal(actual: np.ndarray, expected: np.ndarray, op: str, what: str) -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if op == "AVG":
        tol = 1e-2 if actual.dtype.itemsize == 2 else 1e-6
        ok = np.allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=tol, atol=tol)
    else:
        ok = np.array_equal(actual.view(np.uint8), expected.view(np.uint8))
    if not ok:
        bad = np.flatnonzero(actual.astype(np.float64) != expected.astype(np.float64))[:5]
        raise AssertionError(f"{what}: wrong at {bad.tolist()}: got {actual[bad]}, want {expected[bad]}")
