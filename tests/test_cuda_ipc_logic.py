"""plexus.device.ipc without a GPU: the CUDA calls are replaced by FakeCuda (tests/fake_cuda.py,
host memory shared through files), everything else is real: the public collectives on device
arrays, the records the ranks exchange, the slices each rank reduces and the peers' pointers it
writes, the agreement to stage instead, the errors. 1 to 4 real processes, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
import reference as ref
from fake_cuda import FakeCuda
from launch import run_ranks
from plexus import device
from plexus.device import ipc, libraries

DTYPES = [d for d in ref.DTYPES if d != "bfloat16"]  # __cuda_array_interface__ cannot say bfloat16
COUNTS = [0, 1, 7, 1000, 65539]


def _cases(dtypes=DTYPES):
    for dtype in dtypes:
        for op in ref.OPS:
            if ref.valid(op, dtype):
                yield dtype, op


def _fake(folder, rank, **kw) -> FakeCuda:
    """FakeCuda as this process's driver (native=True: with the emulated native path)."""
    fake = FakeCuda(folder, rank, **kw)
    ipc.set_driver(fake)
    device.PATHS.clear()
    return fake


def _collectives(rank, world, folder, native=False, through=None):
    """The public collectives on fake device arrays against numpy; with `native`, the kinds of
    plexus.device.native run on the emulated device (tests/test_device_native.py); `through`:
    the path every call must take instead of CUDA IPC ("ucx": tests/test_ucx_device.py)."""
    fake = _fake(folder, rank, native=native)
    if through:
        from test_device_logic import FakeOps

        libraries._OPS["cupy"] = FakeOps()  # the stream syncs and working memory of the ucx path
    checked = 0
    for dtype, op in _cases():
        for count in COUNTS:
            case = f"ipc/{dtype}/{op}/{count}"
            inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
            want = ref.reduce_ref(inputs, op, dtype)
            x = fake.array(inputs[rank], offset=16 * rank + 16)  # arrays do not start their allocation
            plexus.all_reduce(x, op=ref.plexus_op(op))
            ref.assert_equal(x.host, want, op, f"all_reduce in place {case}")
            x, out = fake.array(inputs[rank]), fake.array(np.zeros_like(inputs[rank]), offset=48)
            plexus.all_reduce(x, op=ref.plexus_op(op), out=out)
            ref.assert_equal(out.host, want, op, f"all_reduce {case}")
            ref.assert_equal(x.host, inputs[rank], "SUM", f"all_reduce input left alone {case}")
            checked += 2
        for count in (0, 1, 13, 4099):
            case = f"ipc-rs/{dtype}/{op}/{count}"
            inputs = [ref.make_input(case, r, count * world, dtype, op) for r in range(world)]
            want = ref.reduce_ref(inputs, op, dtype)[rank * count:(rank + 1) * count]
            src, dst = fake.array(inputs[rank]), fake.array(np.zeros(count, inputs[rank].dtype))
            plexus.reduce_scatter_tensor(dst, src, op=ref.plexus_op(op))
            ref.assert_equal(dst.host, want, op, f"reduce_scatter_tensor {case}")
            whole = fake.array(inputs[rank])
            mine = _fake_view(whole, rank * count, count)  # in place: our block of the input
            plexus.reduce_scatter_tensor(mine, whole, op=ref.plexus_op(op))
            ref.assert_equal(mine.host, want, op, f"reduce_scatter_tensor in place {case}")
            checked += 2
    for dtype in DTYPES:
        for count in (0, 1, 7, 65539):
            case = f"ipc-ag/{dtype}/{count}"
            inputs = [ref.make_input(case, r, count, dtype) for r in range(world)]
            out = fake.array(np.zeros(count * world, inputs[0].dtype), offset=8)
            plexus.all_gather_into_tensor(out, fake.array(inputs[rank]))
            ref.assert_equal(out.host, np.concatenate(inputs), "SUM", f"all_gather_into_tensor {case}")
            out = fake.array(np.zeros(count * world, inputs[0].dtype))
            mine = _fake_view(out, rank * count, count)
            mine.host[...] = inputs[rank]
            plexus.all_gather_into_tensor(out, mine)
            ref.assert_equal(out.host, np.concatenate(inputs), "SUM", f"all_gather_into_tensor in place {case}")
            outs = [fake.array(np.zeros(count, inputs[0].dtype), offset=8 * p) for p in range(world)]
            w = plexus.all_gather(outs, fake.array(inputs[rank]), async_op=True)
            assert w.result() == outs
            for p in range(world):
                ref.assert_equal(outs[p].host, inputs[p], "SUM", f"all_gather {case} from {p}")
            checked += 3
    for i, (dtype, op) in enumerate(_cases()):
        root = i % world
        for count in (0, 1, 999):
            case = f"ipc-rooted/{dtype}/{op}/{count}"
            inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
            x = fake.array(inputs[rank], offset=8)
            plexus.broadcast(x, src=root)
            ref.assert_equal(x.host, inputs[root], "SUM", f"broadcast {case} from {root}")
            x = fake.array(inputs[rank])
            plexus.reduce(x, dst=root, op=ref.plexus_op(op))
            want = ref.reduce_ref(inputs, op, dtype) if rank == root else inputs[rank]
            ref.assert_equal(x.host, want, op if rank == root else "SUM", f"reduce {case} to {root}")
            checked += 2
    with pytest.raises(ValueError, match=f"rank {world} is not a member"):
        plexus.broadcast(fake.array(np.ones(3, np.float32)), src=world)
    if through or native:
        assert set(device.PATHS) == {through or "native"}, device.PATHS
    else:
        assert set(device.PATHS) == {"cuda_ipc"}, device.PATHS  # nothing was staged
    if world > 1 and not native and not through:
        # Each peer's allocation is mapped once per array, its events once per group.
        assert fake.calls["event_open"] == 2 * (world - 1), fake.calls
    plexus.barrier()
    return checked


def _fake_view(a, start, count):
    from fake_cuda import FakeDeviceArray

    return FakeDeviceArray(a.host[start:start + count])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_collectives_through_ipc(world, tmp_path):
    counts = run_ranks(world, _collectives, str(tmp_path), timeout=600)
    assert len(set(counts)) == 1 and counts[0] > 0


def _work_and_order(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.full(10, rank + 1.0, np.float32))
    w = plexus.all_reduce(x, async_op=True)
    assert w.is_completed()
    before = fake.calls["wait"]
    w.wait()
    assert fake.calls["wait"] == before + 1  # the current stream waits; the host does not
    np.testing.assert_array_equal(w.result()[0].host, np.full(10, world * (world + 1) / 2, np.float32))
    # Per call: entry recorded before the exchange, done after the kernels; the stream waits for
    # the 2 events of each peer.
    before = dict(fake.calls)
    plexus.all_reduce(x)
    assert fake.calls["record"] - before["record"] == 2
    assert fake.calls["wait"] - before["wait"] == 2 * (world - 1)
    assert fake.calls["reduce"] - before["reduce"] == 1
    return True


def test_async_work_waits_on_the_stream(tmp_path):
    assert run_ranks(3, _work_and_order, str(tmp_path)) == [True] * 3


def _nccl_work_rules(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.full(8, rank + 1.0, np.float32))
    w = plexus.all_reduce(x, async_op=True)
    fake.busy = True  # the kernels are still running on the GPU
    waits = fake.calls["wait"]
    assert w.wait() and fake.calls["wait"] == waits + 1 and fake.calls["synchronize"] == 0  # the stream waits
    assert not w.is_completed()  # wait() did not wait for the GPU
    w.synchronize()  # the host does
    assert fake.calls["synchronize"] == 1 and w.is_completed() and w.is_success()
    return True


def test_work_follows_nccls_rules(tmp_path):
    """wait() orders the current stream, is_completed() asks the GPU, synchronize() blocks."""
    assert run_ranks(2, _nccl_work_rules, str(tmp_path)) == [True] * 2


def _many_ranks_reduce_in_two_steps(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.arange(50, dtype=np.int64) * (rank + 1))
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.arange(50) * world * (world + 1) // 2)
    # More ranks than the kernel writes at once: reduce into ours, then copy to each peer.
    assert fake.calls["copy"] == world - 1, fake.calls
    return True


def test_more_ranks_than_one_kernel_writes(tmp_path):
    assert run_ranks(3, _with_max_dsts, str(tmp_path)) == [True] * 3


def _with_max_dsts(rank, world, folder):
    ipc.MAX_DSTS = 2
    return _many_ranks_reduce_in_two_steps(rank, world, folder)


def _fallback(rank, world, folder, fail):
    fake = _fake(folder, rank, fail_export=(fail == "export" and rank == 1), fail_open=(fail == "open" and rank == 2))
    from test_device_logic import FakeOps

    libraries._OPS["cupy"] = FakeOps()  # staging's copies, on the fake memory
    x = fake.array(np.full(6, rank + 1.0, np.float32))
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(6, world * (world + 1) / 2))
    paths = dict(device.PATHS)
    assert list(paths) != ["cuda_ipc"] and len(paths) == 1, paths
    return next(iter(paths))


@pytest.mark.parametrize("fail", ["export", "open"])
def test_one_rank_that_cannot_map_sends_every_rank_to_staging(fail, tmp_path):
    paths = run_ranks(3, _fallback, str(tmp_path), fail)
    verb = "export" if fail == "export" else "map its peers'"
    bad = 1 if fail == "export" else 2
    for r, p in enumerate(paths):
        assert p.startswith("staged: rank") and f"rank {bad} cannot {verb}" in p, (r, p)
    assert "fake: cudaIpc" in paths[bad]  # the rank that failed says why


def _mismatch(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.zeros(5 + rank, np.float32))
    with pytest.raises(plexus.PlexusError, match=r"rank [01] called all_reduce\(dtype float32, count [56].* but "
                                                 r"rank [01] called all_reduce\(dtype float32, count [56]"):
        plexus.all_reduce(x)
    with pytest.raises(plexus.PlexusError, match=r"called broadcast\(dtype float32, count 4, op sum, root [01]\)"):
        plexus.broadcast(fake.array(np.zeros(4, np.float32)), src=rank)  # each rank names itself the root
    return True


def test_mismatched_calls_fail_on_every_rank(tmp_path):
    assert run_ranks(2, _mismatch, str(tmp_path)) == [True, True]


def _disabled(rank, world, folder):
    fake = _fake(folder, rank)
    from test_device_logic import FakeOps

    libraries._OPS["cupy"] = FakeOps()
    x = fake.array(np.ones(4, np.float32))
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(4, 2.0))
    assert fake.calls["export"] == 0
    return dict(device.PATHS)


def test_plexus_cuda_ipc_0_stages(tmp_path):
    paths = run_ranks(2, _disabled, str(tmp_path), env={"PLEXUS_CUDA_IPC": "0"})
    assert paths == [{"staged: PLEXUS_CUDA_IPC=0": 1}, {"staged: rank 0 has PLEXUS_CUDA_IPC=0": 1}]


def _enqueue_failure(rank, world, folder):
    fake = _fake(folder, rank, fail_reduce=(rank == 1))
    x = fake.array(np.ones(64, np.float32))
    with pytest.raises(Exception) as e:
        plexus.all_reduce(x)
    if rank == 1:
        assert "fake: kernel launch failed" in str(e.value)
    else:
        assert isinstance(e.value, plexus.PlexusError) and "rank 1 failed to enqueue" in str(e.value), e.value
    assert fake.calls["wait"] == 2 * (world - 1)  # the peers' done events are waited for all the same
    y = fake.array(np.ones(8, np.float32))  # the group goes on working
    if rank != 1:
        plexus.all_reduce(y, op=plexus.ReduceOp.MAX)
    else:
        fake.fail_reduce = False
        plexus.all_reduce(y, op=plexus.ReduceOp.MAX)
    np.testing.assert_array_equal(y.host, np.ones(8))
    return True


def test_a_rank_that_fails_to_enqueue_fails_every_rank(tmp_path):
    assert run_ranks(3, _enqueue_failure, str(tmp_path)) == [True] * 3


def _local_problem(rank, world, folder, how="driver"):
    fake = _fake(folder, rank, problem="fake: no driver" if rank == 1 and how == "driver" else None,
                 fail_placement=rank == 1 and how == "placement")
    from test_device_logic import FakeOps

    libraries._OPS["cupy"] = FakeOps()
    x = fake.array(np.full(5, rank + 1.0, np.float32))
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(5, 3.0))
    return dict(device.PATHS)


def test_a_rank_without_cuda_sends_every_rank_to_staging(tmp_path):
    paths = run_ranks(2, _local_problem, str(tmp_path))
    assert paths == [{"staged: rank 1 cannot use CUDA": 1}, {"staged: fake: no driver": 1}]
    paths = run_ranks(2, _local_problem, str(tmp_path), "placement")
    assert paths[0] == {"staged: rank 1 cannot use CUDA": 1}
    assert list(paths[1]) == ["staged: cannot tell the device and stream of all_reduce on rank 1's arrays: "
                              "fake: staging device arrays other than torch tensors needs cupy"]


def _several_gpus(rank, world, folder):
    fake = _fake(folder, rank)
    from fake_cuda import FakeDeviceArray

    x = fake.array(np.ones(4, np.float32))
    out = FakeDeviceArray(fake.array(np.ones(4, np.float32)).host, device_id=1 if rank == 0 else 0)
    with pytest.raises(ValueError, match="several GPUs"):
        plexus.all_reduce(x, out=out)
    return True


def test_arrays_on_several_gpus_fail_every_rank(tmp_path):
    assert run_ranks(2, _several_gpus, str(tmp_path)) == [True, True]


def _stale_mappings(rank, world, folder):
    fake = _fake(folder, rank)
    ipc.STALE_CALLS = 4
    keep = fake.array(np.ones(16, np.float32))
    for i in range(12):
        plexus.all_reduce(keep)  # used by every call: never closed
        plexus.all_reduce(fake.array(np.ones(16, np.float32)))  # a new allocation each time
    peers = plexus.distributed._state.world.__dict__["_cuda_ipc"][0]
    assert fake.calls["close"] > 0 and fake.calls["synchronize_device"] > 0, fake.calls
    assert fake.opened[f"r{1 - rank}-0"] == 1, fake.opened  # the peer's `keep`: mapped once, never closed
    assert len(peers.memory) <= 2 * ipc.STALE_CALLS + 1, len(peers.memory)
    np.testing.assert_array_equal(keep.host, np.full(16, 2.0 ** 12))
    plexus.barrier()
    ipc.release(plexus.distributed._state.world)
    assert fake.calls["open"] == fake.calls["close"], fake.calls  # release closes the rest
    return True


def test_stale_mappings_are_closed(tmp_path):
    assert run_ranks(2, _stale_mappings, str(tmp_path)) == [True, True]


def _argument_errors(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="both be device arrays or both host arrays"):
        plexus.all_reduce(x, out=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"output_tensor has 4 elements but must have 2 x 4"):
        plexus.all_gather_into_tensor(fake.array(np.zeros(4, np.float32)), x)
    with pytest.raises(TypeError, match="on rank [01]: band needs an integer"):
        plexus.all_reduce(x, op=plexus.ReduceOp.BAND)
    whole = fake.array(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="partly overlaps"):
        plexus.all_reduce(_fake_view(whole, 0, 4), out=_fake_view(whole, 2, 4))
    assert fake.calls["export"] == 0  # every error above came before the ranks exchanged anything
    return True


def test_argument_errors_before_any_exchange(tmp_path):
    assert run_ranks(2, _argument_errors, str(tmp_path)) == [True, True]


def test_slices_cover_the_array_on_16_byte_boundaries():
    for count in (0, 1, 5, 17, 1000, 65539):
        for n in (1, 2, 3, 4, 8):
            for itemsize in (1, 2, 4, 8):
                s = ipc.slices(count, n, itemsize)
                assert len(s) == n and s[0][0] == 0 and s[-1][1] == count
                assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
                assert all(lo * itemsize % 16 == 0 or lo == count for lo, _ in s)
