"""The chunked, overlapped staging of all_reduce on device arrays (plexus._device_pipeline),
without a GPU: host memory poses as device memory (FakeDeviceArray, FakeOps of
test_device_logic). On 1-4 real processes, against numpy, with chunks small enough that one
call is many chunks."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
import reference as ref
from launch import run_ranks
from plexus import _cuda_ipc, _device_ops
from test_device_logic import FakeDeviceArray, FakeOps

DTYPES = [d for d in ref.DTYPES if d != "bfloat16"]  # __cuda_array_interface__ cannot say bfloat16
CHUNK = 256


def _all_reduce_in_chunks(rank, world):
    ops = _device_ops._OPS["cupy"] = FakeOps()
    checked = 0
    for dtype in DTYPES:
        for op in ref.OPS:
            if not ref.valid(op, dtype):
                continue
            for count in (0, 1, 7, 1000, 4099):
                case = f"pipeline/{dtype}/{op}/{count}"
                inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
                want = ref.reduce_ref(inputs, op, dtype)
                x = FakeDeviceArray(inputs[rank].copy())
                ops.log.clear()
                plexus.all_reduce(x, op=ref.plexus_op(op))
                ref.assert_equal(x.host, want, op, f"in place {case}")
                chunks = -(-count * inputs[0].itemsize // CHUNK)
                assert sum(e[0] == "d2h" for e in ops.log) == chunks, (case, ops.log[:5])
                assert sum(e[0] == "h2d" for e in ops.log) == chunks
                x, out = FakeDeviceArray(inputs[rank].copy()), FakeDeviceArray(np.zeros_like(inputs[rank]))
                w = plexus.all_reduce(x, op=ref.plexus_op(op), out=out, async_op=True)
                w.wait()
                ref.assert_equal(out.host, want, op, f"out of place {case}")
                ref.assert_equal(x.host, inputs[rank], "SUM", f"input left alone {case}")
                checked += 2
    paths = set(_cuda_ipc.PATHS)
    assert len(paths) == 1 and next(iter(paths)).startswith("staged: "), paths
    return checked


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_all_reduce_staged_in_chunks(world):
    counts = run_ranks(world, _all_reduce_in_chunks, env={"PLEXUS_STAGE_CHUNK_BYTES": str(CHUNK)}, timeout=600)
    assert len(set(counts)) == 1 and counts[0] > 0


def _mismatch(rank, world):
    _device_ops._OPS["cupy"] = FakeOps()
    x = FakeDeviceArray(np.ones(5 + rank, np.float32))
    # Found in the CUDA IPC exchange (one host) or by the pipeline's own check (several hosts).
    with pytest.raises(plexus.PlexusError, match=r"rank [01] called all_reduce\(.*count [56].* but rank [01]"):
        plexus.all_reduce(x)
    y = FakeDeviceArray(np.ones(3, np.float32))
    plexus.all_reduce(y)  # the group goes on
    np.testing.assert_array_equal(y.host, np.full(3, 2.0))
    return True


@pytest.mark.parametrize("hosts", ["a,a", "a,b"])
def test_ranks_that_disagree_fail_at_once(hosts):
    env = {"PLEXUS_STAGE_CHUNK_BYTES": "8", "PLEXUS_HOST_ID_BY_RANK": hosts}
    assert run_ranks(2, _mismatch, env=env) == [True, True]


def test_chunk_setting_is_checked(monkeypatch):
    from plexus import _device_pipeline

    monkeypatch.setenv("PLEXUS_STAGE_CHUNK_BYTES", "4M")
    with pytest.raises(ValueError, match="PLEXUS_STAGE_CHUNK_BYTES='4M'"):
        _device_pipeline.chunk_bytes()
    monkeypatch.setenv("PLEXUS_STAGE_CHUNK_BYTES", "1e6")
    assert _device_pipeline.chunk_bytes() == 1000000
