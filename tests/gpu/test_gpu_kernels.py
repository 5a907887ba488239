"""The CUDA reduction kernels (_C._cuda_reduce) on cupy buffers against the CPU kernels (_C._reduce,
themselves checked against numpy): every dtype x op, bit for bit, with 1-65 sources, odd lengths,
every alignment case (vector body, scalar head/tail, all-scalar), aliasing and streams."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import reference as ref
from plexus import _C

pytestmark = [pytest.mark.cupy, pytest.mark.kernels]

CODES = {name: i for i, name in enumerate(_C.DTYPES)}
OP_CODES = {name.upper(): i for i, name in enumerate(_C.OPS)}
COUNTS = [0, 1, 7, 1000, 2**20 + 3]
NSRCS = [1, 2, 3, 8]
CASES = [(d, o) for d in ref.DTYPES for o in ref.OPS if ref.valid(o, d)]


def post_scale(op, nsrcs):
    return {"AVG": 1.0 / nsrcs, "PREMUL_SUM": ref.PREMUL_FACTOR}.get(op, 1.0)


def inputs(case, dtype, op, nsrcs, count, random_floats):
    if random_floats and dtype in ref.FLOATS:  # rounding is then compared bit for bit too
        rng = np.random.default_rng(zlib.crc32(case.encode()))
        return [rng.standard_normal(count).astype(ref.np_dtype(dtype)) for _ in range(nsrcs)]
    return [ref.make_input(case, i, count, dtype, op) for i in range(nsrcs)]


def cpu_reduce(op, dtype, srcs, scale):
    dst = np.empty_like(srcs[0])
    _C._reduce(OP_CODES[op], CODES[dtype], dst.ctypes.data, [s.ctypes.data for s in srcs], dst.size, scale)
    return dst


def gpu_reduce(op, dtype, srcs, scale, offsets=None, stream=None, alias=None):
    """Runs the kernel on copies of `srcs` in device memory, each placed `offsets[j]` elements
    into its own allocation (the last offset is dst's); alias=j makes dst source j itself."""
    import cupy as cp

    es = srcs[0].dtype.itemsize
    n = srcs[0].size
    offsets = offsets or [0] * (len(srcs) + 1)
    bufs = []
    for j, s in enumerate(srcs):
        b = cp.zeros((n + offsets[j]) * es + 16, dtype=cp.uint8)
        b[offsets[j] * es:(offsets[j] + n) * es] = cp.asarray(s.view(np.uint8))
        bufs.append(b)
    if alias is None:
        dbuf = cp.full((n + offsets[-1]) * es + 16, 0xAB, dtype=cp.uint8)
        doff = offsets[-1] * es
    else:
        dbuf, doff = bufs[alias], offsets[alias] * es
    stream = stream or cp.cuda.get_current_stream()
    _C._cuda_reduce(OP_CODES[op], CODES[dtype], dbuf.data.ptr + doff,
                    [b.data.ptr + offsets[j] * es for j, b in enumerate(bufs)], n, scale, stream.ptr)
    stream.synchronize()
    out = cp.asnumpy(dbuf)
    if alias is None:  # the kernel writes nothing outside dst
        assert (out[:doff] == 0xAB).all() and (out[doff + n * es:] == 0xAB).all()
    return out[doff:doff + n * es].view(srcs[0].dtype)


def same(got, want, arithmetic):
    """Bit-equal; for arithmetic ops NaN payloads may differ (GPUs make canonical NaNs)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if not got.size:
        return True, ""
    g, w = got.view(np.uint8).reshape(got.size, -1), want.view(np.uint8).reshape(want.size, -1)
    equal = (g == w).all(axis=1)
    if arithmetic and (got.dtype.kind == "f" or got.dtype == ref.BFLOAT16):
        gf, wf = got.astype(np.float64), want.astype(np.float64)
        equal |= np.isnan(gf) & np.isnan(wf)
    bad = np.flatnonzero(~equal)[:5]
    return not bad.size, f"first mismatches at {bad.tolist()}: got {got[bad]}, want {want[bad]}"


@pytest.mark.parametrize("dtype,op", CASES, ids=[f"{d}-{o}" for d, o in CASES])
def test_kernel_matches_cpu(dtype, op):
    for nsrcs in NSRCS:
        for count in COUNTS:
            for random_floats in ((False, True) if dtype in ref.FLOATS else (False,)):
                case = f"gpu/{dtype}/{op}/{nsrcs}/{count}/{random_floats}"
                srcs = inputs(case, dtype, op, nsrcs, count, random_floats)
                scale = post_scale(op, nsrcs)
                want = cpu_reduce(op, dtype, srcs, scale)
                # aligned; all shifted alike (vector body + scalar ends); shifted apart (all scalar)
                layouts = [None, [1] * (nsrcs + 1), list(range(nsrcs + 1))] if count >= 7 else [None]
                for offsets in layouts:
                    ok, why = same(gpu_reduce(op, dtype, srcs, scale, offsets), want, op not in ("MIN", "MAX"))
                    assert ok, f"{case} offsets {offsets}: {why}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int32", "bool"])
def test_more_sources_than_fit_in_kernel_parameters(dtype):
    op = "SUM"
    srcs = inputs(f"many/{dtype}", dtype, op, 65, 10007, random_floats=True)
    ok, why = same(gpu_reduce(op, dtype, srcs, 1.0), cpu_reduce(op, dtype, srcs, 1.0), True)
    assert ok, why


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_accumulate_in_float32_and_round_once(dtype):
    dt = ref.np_dtype(dtype)
    ulp = float(np.finfo(np.float16).eps) if dtype == "float16" else 2.0**-7
    srcs = [np.full(1001, 1.0, dtype=dt)] + [np.full(1001, ulp / 2, dtype=dt) for _ in range(4)]
    got = gpu_reduce("SUM", dtype, srcs, 1.0)
    assert np.all(got.astype(np.float64) == 1.0 + 2 * ulp), got[:3]


@pytest.mark.parametrize("dtype", ref.FLOATS)
@pytest.mark.parametrize("op", ["MIN", "MAX", "SUM"])
def test_nan_inf_and_signed_zero(dtype, op):
    dt = ref.np_dtype(dtype)
    vals = np.array([np.nan, 1.0, -np.inf, np.inf, -0.0, 0.0, -2.5, 3.0], dtype=np.float64)
    a = np.tile(vals, 8).astype(dt)
    b = np.repeat(vals, 8).astype(dt)
    want = cpu_reduce(op, dtype, [a, b], 1.0)
    ok, why = same(gpu_reduce(op, dtype, [a, b], 1.0), want, op == "SUM")
    assert ok, why
    if op != "SUM":  # NaN propagates, as in numpy
        np_op = np.minimum if op == "MIN" else np.maximum
        assert (np.isnan(want.astype(np.float64)) == np.isnan(np_op(a, b).astype(np.float64))).all()


@pytest.mark.parametrize("alias", [0, 2])
def test_destination_may_be_a_source(alias):
    srcs = inputs("alias", "float32", "SUM", 3, 100003, random_floats=True)
    ok, why = same(gpu_reduce("SUM", "float32", srcs, 1.0, alias=alias), cpu_reduce("SUM", "float32", srcs, 1.0), True)
    assert ok, why


def test_runs_in_order_on_the_callers_stream():
    import cupy as cp

    n = 1 << 24
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        a = cp.zeros(n, cp.float32)
        b = cp.zeros(n, cp.float32)
        a += 1  # enqueued on s, not yet done when the kernel is enqueued behind it
        b += 2
        _C._cuda_reduce(OP_CODES["SUM"], CODES["float32"], a.data.ptr, [a.data.ptr, b.data.ptr], n, 1.0, s.ptr)
        a *= 2
    s.synchronize()
    assert float(a.min()) == 6.0 and float(a.max()) == 6.0


def test_misaligned_pointer_is_refused_not_a_crash():
    import cupy as cp

    buf = cp.zeros(64, cp.uint8)
    with pytest.raises(ValueError, match="not aligned to float32"):
        _C._cuda_reduce(OP_CODES["SUM"], CODES["float32"], buf.data.ptr + 1, [buf.data.ptr], 4, 1.0, 0)
    # The context is still healthy afterwards.
    x = cp.ones(4, cp.float32)
    _C._cuda_reduce(OP_CODES["SUM"], CODES["float32"], x.data.ptr, [x.data.ptr, x.data.ptr], 4, 1.0, 0)
    assert cp.asnumpy(x).tolist() == [2.0] * 4
    assert _C.cuda_runtime_available()
