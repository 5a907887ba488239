"""Large all_reduces of the native device path in place on arrays every rank maps for the call
(plexus.device.mapped, DeviceComm.all_reduce_mapped), without a GPU: FakeCuda(native=True) maps
the peers' fake allocations and runs the direct program on the emulated device, in 1 to 4 real
processes. PLEXUS_DEVICE_MAPPED_MIN is lowered so that small arrays take the path."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import plexus
from fake_cuda import FakeDeviceArray
from launch import run_ranks
from plexus.device import ipc, mapped, native
from test_cuda_ipc_logic import _collectives
from test_device_native import _fake

SMALL_MIN = {"PLEXUS_DEVICE_MAPPED_MIN": "1K"}


def _group():
    return plexus.distributed._world("test")  # noqa: SLF001


def _matrix(rank, world, folder):
    mapped.STAGED.clear()
    checked = _collectives(rank, world, folder, native=True)
    return checked, _group()._native.comm.mapped_calls, dict(mapped.STAGED)  # noqa: SLF001


@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_collective_matrix_matches_numpy_with_mapped_all_reduces(world, tmp_path):
    """Every dtype and op, counts 0 to 65539, in place and out of place, arrays at offsets within
    their allocations: the all_reduces of 1 KiB and more run on mapped arrays."""
    res = run_ranks(world, _matrix, str(tmp_path), env=SMALL_MIN, timeout=900)
    assert len(set(r[0] for r in res)) == 1 and res[0][0] > 0
    assert all(r[1] == res[0][1] > 0 for r in res), res
    assert all(r[2] == {} for r in res), res


def _reused(rank, world, folder):
    fake = _fake(folder, rank)
    g = _group()
    n = 1031  # 4124 bytes: a prime count, not a multiple of 16 bytes per rank
    a = fake.array(np.zeros(n, np.float32), offset=16 * rank)
    b = fake.array(np.zeros(n, np.float32), offset=40)
    plexus.all_reduce(fake.array(np.ones(3, np.float32)))  # set up: the fast path is open from here
    want = None
    for i in range(20):  # in place, then out of place: the same arrays, mapped once
        a.host[...] = np.arange(n, dtype=np.float32) * (rank + 1) + i
        assert not native.all_reduce_fast(g, a, plexus.ReduceOp.SUM.code)  # mapped: the checked path
        plexus.all_reduce(a)
        want = np.arange(n, dtype=np.float32) * sum(range(1, world + 1)) + i * world
        np.testing.assert_array_equal(a.host, want)
        plexus.all_reduce(a, op=plexus.ReduceOp.MAX, out=b)
        np.testing.assert_array_equal(b.host, want)
        plexus.all_reduce(a, op=plexus.ReduceOp.AVG)
        np.testing.assert_allclose(a.host, want, rtol=1e-6)
    small = fake.array(np.full(255, rank + 1.0, np.float32))  # 1020 bytes: below the 1 KiB, staged
    plexus.all_reduce(small)
    np.testing.assert_array_equal(small.host, np.full(255, world * (world + 1) / 2))
    comm = g._native.comm  # noqa: SLF001
    opened = sorted(fake.opened.values())
    plexus.destroy_process_group()
    return comm.mapped_calls, opened, fake.calls["close"], native.explain(g, 4124)


@pytest.mark.parametrize("world", [2, 3])
def test_arrays_used_again_are_mapped_once_and_closed_at_the_end(world, tmp_path):
    res = run_ranks(world, _reused, str(tmp_path), env=SMALL_MIN)
    for calls, opened, closed, explained in res:
        assert calls == 60
        assert opened == [1] * (2 * (world - 1)), opened  # a and b of every peer, once each
        assert closed == 2 * (world - 1)
    assert res[0][3] is None  # the group is gone


def _explain(rank, world, folder):
    fake = _fake(folder, rank)
    plexus.all_reduce(fake.array(np.ones(3, np.float32)))
    g = _group()
    return native.explain(g, 1023), native.explain(g, 1024)


def test_explain_says_from_which_size_arrays_are_mapped(tmp_path):
    below, above = run_ranks(2, _explain, str(tmp_path), env=SMALL_MIN)[0]
    assert below.startswith("oneshot"), below
    assert above.startswith("mapped: 1024 bytes >= 1 KiB (PLEXUS_DEVICE_MAPPED_MIN)"), above


def _declined(rank, world, folder, how):
    fake = _fake(folder, rank)
    mapped.STAGED.clear()
    if rank == 1:
        setattr(fake, how, True)
    x = fake.array(np.full(3001, rank + 1, np.int32), offset=8)
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(3001, world * (world + 1) // 2, np.int32))
    return _group()._native.comm.mapped_calls, dict(mapped.STAGED)  # noqa: SLF001


@pytest.mark.parametrize("how,why", [("fail_export", "cannot export its arrays"),
                                     ("fail_open", "cannot map its peers' arrays")])
def test_a_rank_that_cannot_export_or_map_stages_the_call_on_every_rank(how, why, tmp_path):
    res = run_ranks(3, _declined, str(tmp_path), how, env=SMALL_MIN)
    for rank, (calls, staged) in enumerate(res):
        assert calls == 0
        (text, n), = staged.items()
        assert n == 1 and why in text and "rank 1" in text, (rank, text)


def _capture_alike(rank, world, folder):
    fake = _fake(folder, rank)
    mapped.STAGED.clear()
    fake.capture = True
    x = fake.array(np.full(3001, rank + 1.0, np.float64))
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(3001, 3.0))
    return _group()._native.comm.mapped_calls, dict(mapped.STAGED)  # noqa: SLF001


def test_a_captured_call_is_staged_not_mapped(tmp_path):
    assert run_ranks(2, _capture_alike, str(tmp_path), env=SMALL_MIN) == [(0, {"the stream is being captured": 1})] * 2


def _mismatch(rank, world, folder):
    fake = _fake(folder, rank)
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_reduce(fake.array(np.ones(1000 + rank, np.float32)))
    return str(e.value)


def test_mismatched_counts_fail_on_both_ranks_naming_both_calls(tmp_path):
    for rank, text in enumerate(run_ranks(2, _mismatch, str(tmp_path), env=SMALL_MIN)):
        assert f"rank {rank} called all_reduce(dtype float32, count {1000 + rank}, op sum)" in text, text
        assert f"rank {1 - rank} called all_reduce(dtype float32, count {1001 - rank}, op sum)" in text, text


def _registered_first(rank, world, folder):
    fake = _fake(folder, rank)
    a = fake.array(np.full(2048, rank + 1.0, np.float32))
    reg = plexus.register(a)
    assert reg.zero_copy, reg
    plexus.all_reduce(a)
    np.testing.assert_array_equal(a.host, np.full(2048, 3.0))
    comm = _group()._native.comm  # noqa: SLF001
    return comm.direct_calls, comm.mapped_calls


def test_registered_buffers_need_no_mapping_per_call(tmp_path):
    env = dict(SMALL_MIN, PLEXUS_DEVICE_DIRECT_MIN="1K")
    assert run_ranks(2, _registered_first, str(tmp_path), env=env) == [(1, 0)] * 2


def _stale(rank, world, folder):
    ipc.STALE_CALLS = 4  # this process only
    fake = _fake(folder, rank)
    for i in range(13):  # a new allocation every call: the old mappings go once stale
        x = fake.array(np.full(600, i + rank, np.float32))
        plexus.all_reduce(x)
        np.testing.assert_array_equal(x.host, np.full(600, 2 * i + 1, np.float32))
    maps = _group().__dict__["_mapped"]
    return len(maps.memory), fake.calls["open"], fake.calls["close"]


def test_mappings_no_call_uses_any_more_are_closed(tmp_path):
    for held, opened, closed in run_ranks(2, _stale, str(tmp_path), env=SMALL_MIN):
        assert opened == 13 and held <= 5 and closed == opened - held, (held, opened, closed)


def _absent(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.ones(1000, np.float32))
    plexus.all_reduce(fake.array(np.ones(3, np.float32)))  # both set up the native path
    if rank == 1:
        time.sleep(4)  # past rank 0's deadline, still in the group
        return "absent"
    t0 = time.monotonic()
    with pytest.raises(plexus.CollectiveTimeout) as e:
        plexus.all_reduce(x)
    return round(time.monotonic() - t0), str(e.value)


def test_a_peer_that_never_calls_makes_the_call_raise_at_the_deadline(tmp_path):
    (seconds, text), absent = run_ranks(2, _absent, str(tmp_path), env=dict(SMALL_MIN, PLEXUS_TIMEOUT="2"),
                                        timeout=120)
    assert absent == "absent" and 1 <= seconds <= 3, seconds
    assert ("rank 0 waited for its peers to share the arrays of all_reduce(dtype float32, count 1000, op sum)"
            in text), text


def _across_the_threshold(rank, world, folder):
    """Counts on either side of the threshold: one rank maps, the other stages; both raise."""
    fake = _fake(folder, rank)
    plexus.all_reduce(fake.array(np.ones(3, np.float32)))
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_reduce(fake.array(np.ones(256 - rank, np.float32)))  # 1024 bytes, 1020 bytes
    return type(e.value).__name__, str(e.value)


def test_calls_on_either_side_of_the_threshold_raise_on_both_ranks(tmp_path):
    res = run_ranks(2, _across_the_threshold, str(tmp_path), env=dict(SMALL_MIN, PLEXUS_TIMEOUT="2"), timeout=120)
    assert "PLEXUS_DEVICE_MAPPED_MIN" in res[0][1], res[0]
    assert res[1][0] in ("CollectiveTimeout", "PeerError"), res[1]


def _different_settings(rank, world, folder):
    if rank == 1:
        os.environ["PLEXUS_DEVICE_MAPPED_MIN"] = "4K"  # read when the group sets up its workspace
    fake = _fake(folder, rank)
    x = fake.array(np.full(600, rank + 1.0, np.float32))  # 2400 bytes: under rank 1's 4 KiB
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(600, 3.0, np.float32))
    y = fake.array(np.full(1024, rank + 1.0, np.float32))  # 4096 bytes
    plexus.all_reduce(y)
    np.testing.assert_array_equal(y.host, np.full(1024, 3.0, np.float32))
    comm = _group()._native.comm  # noqa: SLF001
    return comm.mapped_min, comm.mapped_calls


def test_the_group_maps_from_the_largest_threshold_of_its_ranks(tmp_path):
    assert run_ranks(2, _different_settings, str(tmp_path), env=SMALL_MIN) == [(4096, 1)] * 2


def _premul_factors(rank, world, folder):
    fake = _fake(folder, rank)
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_reduce(fake.array(np.ones(1000, np.float32)), op=plexus.ReduceOp.premul_sum(1.0 + rank))
    return str(e.value)


def test_different_premul_factors_are_a_mismatch_naming_both(tmp_path):
    for rank, text in enumerate(run_ranks(2, _premul_factors, str(tmp_path), env=SMALL_MIN)):
        assert f"rank {rank} called all_reduce(dtype float32, count 1000, op premul_sum, factor {1.0 + rank})" in text
        assert f"factor {2.0 - rank}" in text, text


def _odd_shapes(rank, world, folder):
    """Asynchronous, input and output in one allocation, and (threshold 0) empty and tiny arrays."""
    fake = _fake(folder, rank)
    both = fake.array(np.zeros(2000, np.float32), offset=8)
    src, out = FakeDeviceArray(both.host[:1000]), FakeDeviceArray(both.host[1000:])
    src.host[...] = np.arange(1000) + rank
    w = plexus.all_reduce(src, out=out, async_op=True)
    w.wait()
    np.testing.assert_array_equal(out.host, (2 * np.arange(1000) + 1).astype(np.float32))
    np.testing.assert_array_equal(src.host, np.arange(1000) + rank)
    for n in (0, 1, 5):
        x = fake.array(np.full(n, rank + 1, np.int64))
        plexus.all_reduce(x)
        np.testing.assert_array_equal(x.host, np.full(n, 3, np.int64))
    return _group()._native.comm.mapped_calls, dict(mapped.STAGED)  # noqa: SLF001


def test_async_calls_one_allocation_and_tiny_arrays(tmp_path):
    assert run_ranks(2, _odd_shapes, str(tmp_path), env={"PLEXUS_DEVICE_MAPPED_MIN": "0"}) == [(3, {})] * 2


def _deferred(rank, world, folder):
    """Stale mappings wait for the GPU: closed only once the event after the latest call is done."""
    ipc.STALE_CALLS = 4  # this process only
    fake = _fake(folder, rank)
    closes = []
    for i in range(13):
        fake.busy = i < 8  # the "GPU" is behind for the first 8 calls: nothing may close then
        x = fake.array(np.full(600, i + rank, np.float32))
        plexus.all_reduce(x)
        closes.append(fake.calls["close"])
    return closes, fake.calls["synchronize_device"]


def test_stale_mappings_close_only_once_the_gpu_is_past_them(tmp_path):
    for closes, syncs in run_ranks(2, _deferred, str(tmp_path), env=SMALL_MIN):
        assert closes[:8] == [0] * 8 and closes[-1] == 8, closes  # at the 12th call: the first 8
        assert syncs == 0


def test_forcing_a_staged_program_turns_mapping_off(monkeypatch):
    monkeypatch.setenv("PLEXUS_DEVICE_ALGO", "twoshot")
    comm = plexus._C.DeviceComm(0, 2, 0, True, 0, 5.0, [0, 1])
    assert comm.mapped_min == 2**64 - 1
    assert comm.explain_all_reduce(1 << 30).startswith("twoshot: PLEXUS_DEVICE_ALGO")
    monkeypatch.delenv("PLEXUS_DEVICE_ALGO")
    monkeypatch.setenv("PLEXUS_DEVICE_MAPPED_MIN", "64K")
    assert plexus._C.DeviceComm(0, 2, 0, True, 0, 5.0, [0, 1]).mapped_min == 64 << 10
