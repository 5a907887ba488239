"""The CPU reduction kernels on their own (no communication), against numpy: every dtype x op,
several inputs at once, odd lengths, NaN propagation, wrap-around, and float16/bfloat16
accumulating in float32 with a single rounding."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import reference as ref
from plexus import _C

CODES = {name: i for i, name in enumerate(_C.DTYPES)}
OP_CODES = {name.upper(): i for i, name in enumerate(_C.OPS)}


def run_kernel(op, dtype, srcs, post_scale=1.0, dst=None):
    dst = np.empty_like(srcs[0]) if dst is None else dst
    _C._reduce(OP_CODES[op], CODES[dtype], dst.ctypes.data, [s.ctypes.data for s in srcs], dst.size, post_scale)
    return dst


@pytest.mark.parametrize("dtype", ref.DTYPES)
@pytest.mark.parametrize("op", [o for o in ref.OPS if o not in ("AVG", "PREMUL_SUM")])
@pytest.mark.parametrize("nsrcs", [1, 2, 5])
@pytest.mark.parametrize("count", [0, 1, 7, 513, 100003])
def test_kernel_matches_numpy(dtype, op, nsrcs, count):
    if not ref.valid(op, dtype):
        with pytest.raises(TypeError):
            run_kernel(op, dtype, [ref.make_input("k", i, 4, dtype, op) for i in range(nsrcs)])
        return
    srcs = [ref.make_input(f"k/{dtype}/{op}/{count}", i, count, dtype, op) for i in range(nsrcs)]
    want = functools.reduce(
        {"SUM": np.add, "PRODUCT": np.multiply, "MIN": np.minimum, "MAX": np.maximum,
         "BAND": np.bitwise_and, "BOR": np.bitwise_or, "BXOR": np.bitwise_xor}[op], srcs)
    ref.assert_equal(run_kernel(op, dtype, srcs), want.astype(srcs[0].dtype), op, f"{op} {dtype}")


@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_destination_may_alias_a_source(dtype):
    a = ref.make_input("alias", 0, 1001, dtype)
    b = ref.make_input("alias", 1, 1001, dtype)
    want = np.add(a, b)
    run_kernel("SUM", dtype, [a, b], dst=a)
    ref.assert_equal(a, want, "SUM", "in place into the first source")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_accumulate_in_float32_and_round_once(dtype):
    dt = ref.np_dtype(dtype)
    # 1 + 4 * (half an ulp at 1.0): rounding after every add would lose each small term,
    # rounding once keeps their sum.
    ulp = float(np.finfo(np.float16).eps) if dtype == "float16" else 2.0**-7
    srcs = [np.full(33, 1.0, dtype=dt)] + [np.full(33, ulp / 2, dtype=dt) for _ in range(4)]
    got = run_kernel("SUM", dtype, srcs)
    assert np.all(got.astype(np.float64) == 1.0 + 2 * ulp), got[:3]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("op", ["MIN", "MAX", "SUM"])
def test_nan_propagates(dtype, op):
    dt = ref.np_dtype(dtype)
    a = np.array([1, np.nan, 3, 4], dtype=np.float64).astype(dt)
    b = np.array([np.nan, 2, 3, 0], dtype=np.float64).astype(dt)
    got = run_kernel(op, dtype, [a, b]).astype(np.float64)
    assert np.isnan(got[0]) and np.isnan(got[1]) and not np.isnan(got[2:]).any(), got


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_post_scale_divides_the_sum(dtype):
    dt = ref.np_dtype(dtype)
    srcs = [np.full(100, v, dtype=dt) for v in (1, 2, 3, 6)]
    got = run_kernel("SUM", dtype, srcs, post_scale=0.25)
    assert np.all(got.astype(np.float64) == 3.0)


def test_bfloat16_rounds_to_nearest_even():
    bf = ref.np_dtype("bfloat16")
    # 1 + 2^-8 is exactly halfway between two bfloat16 values: ties go to the even one (1.0);
    # 1 + 3 * 2^-8 is halfway too and goes up to 1 + 2^-6.
    for value, want in [(1 + 2.0**-8, 1.0), (1 + 3 * 2.0**-8, 1 + 2.0**-6)]:
        srcs = [np.array([1.0], dtype=bf), np.array([value - 1], dtype=bf)]
        got = run_kernel("SUM", "bfloat16", srcs)
        assert float(got[0]) == want, (value, float(got[0]))


def test_kernel_variant_is_reported():
    assert _C.kernel_variant() in ("avx2", "generic")
