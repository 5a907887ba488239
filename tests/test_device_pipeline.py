"""The chunked, overlapped staging of all_reduce on device arrays (plexus.device.pipeline),
without a GPU: host memory poses as device memory (FakeDeviceArray, FakeOps of
test_device_logic). On 1-4 real processes, against numpy, with chunks small enough that one
call is many chunks."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import plexus
import reference as ref
from launch import run_ranks
from plexus import device
from plexus.device import libraries
from test_device_logic import FakeDeviceArray, FakeOps

DTYPES = [d for d in ref.DTYPES if d != "bfloat16"]  # __cuda_array_interface__ cannot say bfloat16
CHUNK = 256


def _all_reduce_in_chunks(rank, world):
    ops = libraries._OPS["cupy"] = FakeOps()
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
    paths = set(device.PATHS)
    assert len(paths) == 1 and next(iter(paths)).startswith("staged: "), paths
    return checked


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_all_reduce_staged_in_chunks(world):
    counts = run_ranks(world, _all_reduce_in_chunks, env={"PLEXUS_STAGE_CHUNK_BYTES": str(CHUNK)}, timeout=600)
    assert len(set(counts)) == 1 and counts[0] > 0


def _mismatch(rank, world):
    libraries._OPS["cupy"] = FakeOps()
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
    from plexus.device import pipeline as _device_pipeline

    monkeypatch.setenv("PLEXUS_STAGE_CHUNK_BYTES", "4M")
    with pytest.raises(ValueError, match="PLEXUS_STAGE_CHUNK_BYTES='4M'"):
        _device_pipeline.chunk_bytes()
    monkeypatch.setenv("PLEXUS_STAGE_CHUNK_BYTES", "1e6")
    assert _device_pipeline.chunk_bytes() == 1000000


class DeferredOps(FakeOps):
    """A stream that runs late: copies happen only when an event recorded after them is waited
    for (or at flush(), the caller's stream synchronize), so a chunk reduced before its copy to
    the host was waited for would hold stale bytes."""

    def __init__(self, fail_wait=None):
        super().__init__()
        self.queued, self.ran, self.waits, self.fail_wait = [], 0, 0, fail_wait

    def to_host(self, block, off, x, ptr, nbytes, stream):
        self.log.append(("d2h", ptr, nbytes))
        self.queued.append(lambda: ctypes.memmove(block.host.ctypes.data + off, ptr, nbytes))

    def to_device(self, x, ptr, block, off, nbytes, stream):
        self.log.append(("h2d", ptr, nbytes))
        self.queued.append(lambda: ctypes.memmove(ptr, block.host.ctypes.data + off, nbytes))

    def _run_to(self, n):
        while self.ran < n:
            self.queued[self.ran]()
            self.ran += 1

    def flush(self):
        self._run_to(len(self.queued))

    def record(self, stream):
        ops, n = self, len(self.queued)

        class Event:
            def done(self):
                return ops.ran >= n

            def wait(self):
                ops.waits += 1
                if ops.waits == ops.fail_wait:
                    raise RuntimeError("fake: cudaEventSynchronize failed")
                ops._run_to(n)

            def stream_wait(self, stream):
                pass

        return Event()


def _late_stream(rank, world):
    ops = libraries._OPS["cupy"] = DeferredOps()
    for count in (1, 300, 1000):
        x = FakeDeviceArray(np.arange(count, dtype=np.float64) * (rank + 1))
        plexus.all_reduce(x)
        ops.flush()
        np.testing.assert_array_equal(x.host, np.arange(count) * world * (world + 1) / 2)
    assert ops.waits > 3
    return True


def test_chunks_wait_for_their_copy_to_the_host():
    assert run_ranks(2, _late_stream, env={"PLEXUS_STAGE_CHUNK_BYTES": "256"}) == [True, True]


def _failures(rank, world, where):
    from plexus.device import pipeline as _device_pipeline

    ops = libraries._OPS["cupy"] = DeferredOps(fail_wait=3 if rank == 1 and where == "loop" else None)
    if rank == 1 and where == "setup":
        _device_pipeline.ops_for = lambda kind: (_ for _ in ()).throw(TypeError("fake: needs cupy"))
    x = FakeDeviceArray(np.ones(1000, np.float32))
    with pytest.raises(Exception) as e:
        plexus.all_reduce(x)
    if rank == 1:
        assert "fake: " in str(e.value), e.value
    else:
        assert isinstance(e.value, plexus.PlexusError) and "rank 1 " in str(e.value), e.value
    _device_pipeline.ops_for = libraries.ops_for
    ops.fail_wait = None
    y = FakeDeviceArray(np.ones(700, np.float32))  # the group goes on
    plexus.all_reduce(y)
    ops.flush()
    np.testing.assert_array_equal(y.host, np.full(700, 2.0))
    return True


@pytest.mark.parametrize("where", ["setup", "loop"])
def test_a_rank_that_fails_fails_every_rank(where):
    assert run_ranks(2, _failures, where, env={"PLEXUS_STAGE_CHUNK_BYTES": "256"}, timeout=120) == [True, True]


def test_torch_copies_take_the_chunk_they_are_given(monkeypatch):
    torch = pytest.importorskip("torch")
    import contextlib

    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    ops = libraries.TorchOps()
    t = torch.arange(16, dtype=torch.float32)
    block = plexus.device.pinned.Block("torch", 64, *ops.alloc_host(64))
    ops.to_host(block, 8, t, t.data_ptr() + 16, 32, None)  # elements 4..11 into bytes 8..40
    np.testing.assert_array_equal(block.host[8:40].view(np.float32), np.arange(4, 12))
    block.host[8:40].view(np.float32)[:] = -1
    ops.to_device(t, t.data_ptr() + 16, block, 8, 32, None)
    np.testing.assert_array_equal(t.numpy(), np.r_[np.arange(4), -np.ones(8), np.arange(12, 16)])
