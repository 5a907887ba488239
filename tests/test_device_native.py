"""The native device path (plexus.device.native, csrc/core/device_comm, the programs of
csrc/algorithms/device_programs.h) without a GPU: FakeCuda(native=True) runs the same C++
protocol on the emulated device, workspaces in shared memory mapped by 1 to 4 real processes.
Covers the collectives against numpy (one-shot and two-shot, chunks of a small scratch), the
flags and sequence numbers across many calls, the deadline, mismatched calls, abort, and a
failing peer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import plexus
from fake_cuda import FakeCuda, FakeDeviceArray
from launch import run_ranks
from plexus import device
from plexus.device import ipc, native
from test_cuda_ipc_logic import _collectives


def _fake(folder, rank) -> FakeCuda:
    fake = FakeCuda(folder, rank, native=True)
    ipc.set_driver(fake)
    device.PATHS.clear()
    return fake


# (world, PLEXUS_DEVICE_ALGO, PLEXUS_DEVICE_SCRATCH): both programs, with and without chunks.
CASES = [(1, "", ""), (2, "oneshot", "1024"), (2, "twoshot", ""), (3, "twoshot", "1024"), (3, "oneshot", ""),
         (4, "twoshot", ""), (4, "oneshot", "1024")]


@pytest.mark.parametrize("world,algo,scratch", CASES)
def test_collectives_match_numpy(world, algo, scratch, tmp_path):
    env = {"PLEXUS_DEVICE_ALGO": algo, "PLEXUS_DEVICE_SCRATCH": scratch}
    counts = run_ranks(world, _collectives, str(tmp_path), True, env={k: v for k, v in env.items() if v},
                       timeout=900)
    assert len(set(counts)) == 1 and counts[0] > 0


def _many_calls(rank, world, folder):
    """Alternating sets: hundreds of calls of every kind and size in a row stay right."""
    fake = _fake(folder, rank)
    rng = np.random.default_rng(7)
    for i in range(300):
        n = int(rng.integers(0, 3000))
        x = fake.array(np.full(n, rank + i, np.float32))
        kind = i % 3
        if kind == 0:
            plexus.all_reduce(x)
            np.testing.assert_array_equal(x.host, np.full(n, sum(r + i for r in range(world)), np.float32))
        elif kind == 1:
            out = fake.array(np.zeros(n * world, np.float32))
            plexus.all_gather_into_tensor(out, x)
            np.testing.assert_array_equal(out.host, np.repeat(np.arange(world, dtype=np.float32) + i, n))
        else:
            plexus.broadcast(x, src=i % world)
            np.testing.assert_array_equal(x.host, np.full(n, i % world + i, np.float32))
    comm = plexus.distributed._world("test")._native.comm  # noqa: SLF001
    return comm.blocks, device.PATHS["native"]


def test_hundreds_of_calls_in_a_row(tmp_path):
    res = run_ranks(3, _many_calls, str(tmp_path), env={"PLEXUS_DEVICE_SCRATCH": "4096"})
    assert res == [(2, 300)] * 3


def _mismatch(rank, world, folder):
    fake = _fake(folder, rank)
    plexus.all_reduce(fake.array(np.ones(4, np.float32)))  # set up, and one good call
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_reduce(fake.array(np.ones(4 + rank, np.float32)))
    text = str(e.value)
    assert "mismatched device collectives" in text, text
    assert f"rank {rank} called all_reduce(dtype float32, count {4 + rank}, op sum)" in text, text
    assert f"rank {1 - rank} called all_reduce(dtype float32, count {5 - rank}, op sum)" in text, text
    with pytest.raises(plexus.PlexusError, match="mismatched"):  # it stays failed
        plexus.all_reduce(fake.array(np.ones(4, np.float32)))
    return True


def test_mismatched_calls_fail_on_both_ranks_naming_both_calls(tmp_path):
    assert run_ranks(2, _mismatch, str(tmp_path)) == [True, True]


def _absent_peer(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.ones(8, np.float32))
    plexus.all_reduce(x)
    if rank == 1:
        time.sleep(4)  # rank 0 gives up on the device meanwhile (timeout 1.5 s) and tells us
        with pytest.raises(plexus.PeerError, match="rank 0 failed a device collective"):
            plexus.all_reduce(x)
        return "peer"
    t0 = time.monotonic()
    with pytest.raises(plexus.CollectiveTimeout, match=r"all_reduce\(dtype float32, count 8, op sum\): rank 0 "
                                                       r"waited on the GPU for rank 1 past the timeout"):
        plexus.all_reduce(x)
    return round(time.monotonic() - t0)


def test_an_absent_peer_times_out_and_the_peer_hears_of_it(tmp_path):
    res = run_ranks(2, _absent_peer, str(tmp_path), env={"PLEXUS_TIMEOUT": "1.5"})
    assert res[1] == "peer" and 1 <= res[0] <= 3, res


def _abort(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.ones(8, np.float32))
    plexus.all_reduce(x)
    if rank == 1:
        time.sleep(3)
        return "absent"
    g = plexus.distributed._world("test")  # noqa: SLF001
    threading.Timer(0.5, lambda: g.abort("test abort")).start()
    t0 = time.monotonic()
    with pytest.raises(plexus.PlexusError, match="aborted while rank 0 waited on the GPU for rank 1"):
        plexus.all_reduce(x)
    return time.monotonic() - t0 < 5


def test_abort_stops_a_waiting_call(tmp_path):
    assert run_ranks(2, _abort, str(tmp_path), env={"PLEXUS_TIMEOUT": "60"}) == [True, "absent"]


def _setup_once(rank, world, folder):
    fake = _fake(folder, rank)
    for _ in range(5):
        plexus.all_reduce(fake.array(np.ones(3, np.float32)))
    g = plexus.distributed._world("test")  # noqa: SLF001
    return native.explain(g, 4 << 20), g._native.comm.scratch_bytes  # noqa: SLF001


def test_workspaces_are_set_up_once_and_explained(tmp_path):
    res = run_ranks(3, _setup_once, str(tmp_path))
    assert res[0] == res[1] == res[2]
    assert res[0][0].startswith("twoshot: 4194304 bytes > 2048 KiB"), res
    assert res[0][1] == 8 << 20


def _declines(rank, world, folder):
    fake = FakeCuda(folder, rank, native=rank == 0)  # rank 1's driver has no native path
    ipc.set_driver(fake)
    device.PATHS.clear()
    x = fake.array(np.ones(4, np.float32))
    plexus.all_reduce(x)
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, np.full(4, 4.0))
    return dict(device.PATHS)


def test_one_rank_without_the_native_path_sends_all_to_ipc(tmp_path):
    assert run_ranks(2, _declines, str(tmp_path)) == [{"cuda_ipc": 2}] * 2


def _settings_differ(rank, world, folder, name, values):
    import os
    os.environ[name] = values[rank]  # read when the workspace is made
    fake = _fake(folder, rank)
    x = fake.array(np.arange(1000, dtype=np.float32) + rank)
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, 2 * np.arange(1000, dtype=np.float32) + 1)
    return dict(device.PATHS), native.explain(plexus.distributed._world("test"), 8)  # noqa: SLF001


@pytest.mark.parametrize("name,values", [("PLEXUS_DEVICE_SCRATCH", ["4096", "8192"]),
                                         ("PLEXUS_DEVICE_ALGO", ["oneshot", "twoshot"]),
                                         ("PLEXUS_DEVICE_ALGO", ["", "twoshot"])])
def test_ranks_whose_device_settings_differ_decline_the_native_path_alike(name, values, tmp_path):
    """Each rank maps its peers' workspaces at its own scratch size (at another, they crashed), and a
    one-shot all_reduce meeting a two-shot one reads what was never staged (it timed out, and on a
    GPU would have returned wrong numbers on the one-shot rank first)."""
    assert run_ranks(2, _settings_differ, str(tmp_path), name, values) == [({"cuda_ipc": 1}, None)] * 2


def _fast_path(rank, world, folder):
    fake = _fake(folder, rank)
    g = plexus.distributed._world("test")  # noqa: SLF001
    x = fake.array(np.full(5, rank + 1, np.int32))
    assert not native.all_reduce_fast(g, x, 0)  # before the group's first device call: the checked path
    plexus.all_reduce(x)
    taken = []
    for values, op in ((np.full(5, rank + 1.0, np.float32), plexus.ReduceOp.AVG),
                       (np.full(5, rank + 1, np.int32), plexus.ReduceOp.MAX),
                       (np.ones(5, np.bool_), plexus.ReduceOp.SUM),  # bool: the checked path
                       (np.full(5, rank + 1, np.int32), plexus.ReduceOp.AVG)):  # AVG on integers: a TypeError there
        y = fake.array(values)
        fast = native.all_reduce_fast(g, y, op.code)
        taken.append(fast)
        if not fast:
            try:
                plexus.all_reduce(y, op=op)
            except TypeError as e:
                taken.append(str(e).split(":")[-1].strip()[:40])
        else:
            assert y.host[0] == (1.5 if values.dtype == np.float32 else 2), y.host
    return taken


def test_the_fast_path_takes_plain_calls_and_leaves_the_rest_to_the_checks(tmp_path):
    res = run_ranks(2, _fast_path, str(tmp_path))
    assert res[0] == res[1]
    assert res[0][:4] == [True, True, False, False], res[0]
    assert "avg" in res[0][4].lower() or "int32" in res[0][4], res[0]


def _fast_out_of_place(rank, world, folder):
    fake = _fake(folder, rank)
    g = plexus.distributed._world("test")  # noqa: SLF001
    plexus.all_reduce(fake.array(np.ones(3, np.float32)))  # the group is on the native path
    src, dst = fake.array(np.full(7, rank + 1.0, np.float32)), fake.array(np.zeros(7, np.float32))
    taken = [native.all_reduce_fast(g, src, plexus.ReduceOp.SUM.code, dst)]
    values = (src.host.tolist(), dst.host.tolist())
    both = fake.array(np.zeros(14, np.float32)).host
    a, b = FakeDeviceArray(both[:7]), FakeDeviceArray(both[3:10])  # overlapping
    taken.append(native.all_reduce_fast(g, a, 0, b))
    taken.append(native.all_reduce_fast(g, src, 0, fake.array(np.zeros(7, np.float64))))  # another dtype
    taken.append(native.all_reduce_fast(g, src, 0, fake.array(np.zeros(6, np.float32))))  # another size
    with pytest.raises(ValueError, match="overlap"):
        plexus.all_reduce(a, out=b)
    return taken, values, rank


def test_the_fast_path_runs_out_of_place_only_into_a_disjoint_array_of_the_same_shape(tmp_path):
    for taken, (src, dst), rank in run_ranks(2, _fast_out_of_place, str(tmp_path)):
        assert taken == [True, False, False, False]
        assert src == [rank + 1.0] * 7 and dst == [3.0] * 7  # the input is left as it was


def _grids(rank, world, folder):
    import os

    if rank == 0:
        os.environ["PLEXUS_DEVICE_BLOCKS"] = "1"  # read when the group sets up its workspace
    fake = _fake(folder, rank)
    x = fake.array(np.arange(1001, dtype=np.float32) * (rank + 1))
    plexus.all_reduce(x)
    g = plexus.distributed._world("test")  # noqa: SLF001
    return g._native.comm.blocks, bool(np.array_equal(x.host, np.arange(1001, dtype=np.float32) * 3))  # noqa: SLF001


def test_the_group_runs_the_smallest_grid_of_its_ranks(tmp_path):
    assert run_ranks(2, _grids, str(tmp_path)) == [(1, True), (1, True)]


def test_a_grid_outside_one_to_128_blocks_is_refused(monkeypatch):
    for bad in ("0", "129", "many"):
        monkeypatch.setenv("PLEXUS_DEVICE_BLOCKS", bad)
        with pytest.raises(ValueError, match="PLEXUS_DEVICE_BLOCKS"):
            plexus._C.DeviceComm(0, 1, 0, True, 0, 5.0, [0])
    monkeypatch.delenv("PLEXUS_DEVICE_BLOCKS")
    comm = plexus._C.DeviceComm(0, 2, 0, True, 0, 5.0, [0, 1])
    with pytest.raises(ValueError, match="grid of 3 blocks"):
        comm.connect([comm.handle(), comm.handle()], 3)


def test_explain_says_where_one_shot_ends():
    for world, one_shot_max in ((2, 1 << 20), (3, 2 << 20), (4, 2 << 20)):
        comm = plexus._C.DeviceComm(0, world, 0, True, 0, 5.0, list(range(world)))
        assert comm.explain_all_reduce(one_shot_max).startswith("oneshot"), world
        assert comm.explain_all_reduce(one_shot_max + 1).startswith("twoshot"), world


def _registered(rank, world, folder):
    fake = _fake(folder, rank)
    g = plexus.distributed._world("test")  # noqa: SLF001
    n = 3001  # 12004 bytes: above PLEXUS_DEVICE_DIRECT_MIN=4K, not a multiple of 16 per rank
    a = fake.array(np.zeros(n, np.float32), offset=16)
    b = fake.array(np.zeros(n, np.float32))
    reg_a, reg_b = plexus.register(a), plexus.register(b)
    assert reg_a.zero_copy and reg_b.zero_copy, (reg_a, reg_b)
    comm = g._native.comm  # noqa: SLF001
    checked = 0
    for i in range(20):  # in place, then out of place, several times: the flags alternate
        a.host[...] = np.arange(n, dtype=np.float32) * (rank + 1) + i
        plexus.all_reduce(a)
        want = np.arange(n, dtype=np.float32) * sum(range(1, world + 1)) + i * world
        np.testing.assert_array_equal(a.host, want)
        plexus.all_reduce(a, op=plexus.ReduceOp.MAX, out=b)
        np.testing.assert_array_equal(b.host, want)
        checked += 2
    direct = comm.direct_calls
    small = fake.array(np.ones(10, np.float32))
    plexus.all_reduce(small)  # not registered: staged
    plexus.deregister(reg_a)
    plexus.all_reduce(a)  # no longer registered: staged
    np.testing.assert_array_equal(a.host, want * world)
    return checked, direct, comm.direct_calls


@pytest.mark.parametrize("world", [2, 3])
def test_registered_buffers_are_reduced_in_place(world, tmp_path):
    res = run_ranks(world, _registered, str(tmp_path), env={"PLEXUS_DEVICE_DIRECT_MIN": "4K"})
    assert res == [(40, 40, 40)] * world


def _one_sided_registration(rank, world, folder):
    fake = _fake(folder, rank)
    a = fake.array(np.ones(2048, np.float32))
    other = fake.array(np.ones(2048, np.float32))
    plexus.register(a)
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_reduce(a if rank == 0 else other)  # rank 1 passes a buffer it did not register
    with pytest.raises(ValueError, match="different sizes"):
        plexus.register(fake.array(np.ones(16 + rank, np.float32)))
    return str(e.value)


def test_a_registered_buffer_used_on_one_rank_only_is_a_mismatch(tmp_path):
    res = run_ranks(2, _one_sided_registration, str(tmp_path), env={"PLEXUS_DEVICE_DIRECT_MIN": "1K"})
    assert "registered input at offset 0" in res[0] and "mismatched device collectives" in res[0], res[0]
    assert "mismatched device collectives" in res[1], res[1]


def _rooted_lists(rank, world, folder):
    """gather and scatter on the native path: every dtype, counts that do not divide (chunks of a
    small scratch too), every root, gather in place (the root's own entry is its input)."""
    import reference as ref
    from test_cuda_ipc_logic import DTYPES

    fake = _fake(folder, rank)
    checked = 0
    for i, dtype in enumerate(DTYPES):
        for count in (0, 1, 7, 4099):
            root = (i + count) % world
            case = f"rooted/{dtype}/{count}"
            blocks = [ref.make_input(case, r, count, dtype) for r in range(world)]
            src = fake.array(blocks[rank], offset=8)
            outs = [fake.array(np.zeros_like(blocks[0]), offset=16 * q) for q in range(world)] if rank == root else None
            if rank == root and (i + count) % 2:
                outs[root] = src  # in place, every other call
            plexus.gather(src, outs, dst=root)
            if rank == root:
                for q in range(world):
                    ref.assert_equal(outs[q].host, blocks[q], "SUM", f"gather {case} from {q}")
            ins = [fake.array(blocks[q]) for q in range(world)] if rank == root else None
            out = fake.array(np.zeros_like(blocks[0]), offset=4)
            plexus.scatter(out, ins, src=root)
            ref.assert_equal(out.host, blocks[rank], "SUM", f"scatter {case} from {root}")
            checked += 2
    return checked, device.PATHS["native"], sorted(device.PATHS)


def _run_all_natively(fn, world, scratch, folder):
    """Runs `fn` (returning its calls, the native ones and the paths taken) on `world` ranks with
    PLEXUS_DEVICE_SCRATCH=`scratch` (when given): every call ran natively, alike on every rank."""
    env = {"PLEXUS_DEVICE_SCRATCH": scratch} if scratch else {}
    res = run_ranks(world, fn, folder, env=env, timeout=600)
    for checked, native_calls, paths in res:
        assert checked == res[0][0] > 0 and native_calls == checked and paths == ["native"], res


@pytest.mark.parametrize("world,scratch", [(1, ""), (2, ""), (3, "1024"), (4, "")])
def test_gather_and_scatter_run_natively_and_match_numpy(world, scratch, tmp_path):
    _run_all_natively(_rooted_lists, world, scratch, str(tmp_path))


def _rooted_mismatch(rank, world, folder):
    fake = _fake(folder, rank)
    x = fake.array(np.ones(6, np.float32))
    with pytest.raises(plexus.PlexusError) as e:
        plexus.scatter(x, [fake.array(np.ones(6, np.float32)) for _ in range(world)],
                       src=rank)  # every rank names itself the root
    return str(e.value)


def test_rooted_calls_with_different_roots_are_a_mismatch_naming_both(tmp_path):
    for rank, text in enumerate(run_ranks(2, _rooted_mismatch, str(tmp_path))):
        assert "mismatched device collectives" in text, text
        assert f"rank {rank} called scatter(dtype float32, count 6, root {rank})" in text, text


def _all_to_all(rank, world, folder):
    """all_to_all on the native path, both forms: uneven blocks (some empty, different each way),
    several rounds of the scratch for the largest, rows of 3 columns, even splits without sizes."""
    import reference as ref
    from test_collectives import _pair_count
    from test_cuda_ipc_logic import DTYPES

    fake = _fake(folder, rank)
    checked = 0
    for dtype in DTYPES:
        for count in (0, 1, 7, 1000, 4099):
            case = f"a2a/{dtype}/{count}"
            sent = {(i, j): ref.make_input(f"{case}/{i}->{j}", 0, _pair_count(i, j, count), dtype)
                    for i in range(world) for j in range(world)}
            outs = [fake.array(np.zeros(_pair_count(j, rank, count), sent[(0, 0)].dtype), offset=8 * j)
                    for j in range(world)]
            plexus.all_to_all(outs, [fake.array(sent[(rank, j)]) for j in range(world)])
            for j in range(world):
                ref.assert_equal(outs[j].host, sent[(j, rank)], "SUM", f"list {case} from {j}")
            rows_in = [_pair_count(rank, j, count) for j in range(world)]
            rows_out = [_pair_count(j, rank, count) for j in range(world)]
            src = fake.array(np.concatenate([np.repeat(sent[(rank, j)][:, None], 3, axis=1) for j in range(world)]))
            dst = fake.array(np.zeros((sum(rows_out), 3), sent[(0, 0)].dtype))
            plexus.all_to_all_single(dst, src, rows_out, rows_in)
            want = np.concatenate([np.repeat(sent[(j, rank)][:, None], 3, axis=1) for j in range(world)])
            ref.assert_equal(dst.host, want, "SUM", f"single {case}")
            checked += 2
    # Only rank 0 sends, only to the last rank, several rounds' worth: the others learn of it from
    # the pads and go round as often.
    big = 5000
    ins = [fake.array(np.arange(big if rank == 0 and j == world - 1 else 0, dtype=np.float32)) for j in range(world)]
    outs = [fake.array(np.zeros(big if rank == world - 1 and j == 0 else 0, np.float32)) for j in range(world)]
    plexus.all_to_all(outs, ins)
    if rank == world - 1:
        np.testing.assert_array_equal(outs[0].host, np.arange(big, dtype=np.float32))
    src = fake.array(np.arange(world * 4, dtype=np.int64) + 100 * rank)
    dst = fake.array(np.zeros(world * 4, np.int64))
    plexus.all_to_all_single(dst, src)
    want = np.concatenate([np.arange(rank * 4, rank * 4 + 4) + 100 * j for j in range(world)])
    np.testing.assert_array_equal(dst.host, want)
    return checked + 2, device.PATHS["native"], sorted(device.PATHS)


@pytest.mark.parametrize("world,scratch", [(1, ""), (2, "1024"), (3, ""), (4, "1024")])
def test_all_to_all_runs_natively_and_matches_numpy(world, scratch, tmp_path):
    _run_all_natively(_all_to_all, world, scratch, str(tmp_path))


def _all_to_all_disagree(rank, world, folder):
    """Rank 1 sends 3 elements to rank 0, which expects 4 (the others agree); then a call of
    another dtype on the last rank (a second group: the first has failed for good)."""
    fake = _fake(folder, rank)
    outs = [fake.array(np.zeros(4, np.float32)) for _ in range(world)]
    ins = [fake.array(np.ones(3 if rank == 1 and j == 0 else 4, np.float32)) for j in range(world)]
    calls = _count_host_rounds()
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_to_all(outs, ins)
    first = (type(e.value).__name__, str(e.value), calls.count - 2)  # less the group's setup (two rounds)
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_to_all(outs, ins)
    again = str(e.value) == first[1]
    g = plexus.new_group(list(range(world)))
    dtype = np.int32 if rank == world - 1 else np.float32
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_to_all([fake.array(np.zeros(2, dtype)) for _ in range(world)],
                          [fake.array(np.ones(2, dtype)) for _ in range(world)], group=g)
    return first, again, type(e.value).__name__, str(e.value)


def _count_host_rounds():
    """Counts the host all-gathers of the device path from now on (in .count)."""
    class Counter:
        count = 0
    real = ipc.host_all_gather

    def counted(g, mine):
        Counter.count += 1
        return real(g, mine)
    ipc.host_all_gather = counted
    return Counter


def _all_to_all_itself(rank, world, folder):
    """Rank 0 sends itself 3 elements but expects 5 (list form), rank 1 agrees with everyone."""
    fake = _fake(folder, rank)
    outs = [fake.array(np.zeros(5 if rank == 0 and q == 0 else 4, np.float32)) for q in range(world)]
    ins = [fake.array(np.ones(3 if rank == 0 and j == 0 else 4, np.float32)) for j in range(world)]
    with pytest.raises(plexus.PlexusError) as e:
        plexus.all_to_all(outs, ins)
    return type(e.value).__name__, str(e.value)


def test_the_block_a_rank_sends_itself_is_checked_too(tmp_path):
    (kind0, text0), (kind1, text1) = run_ranks(2, _all_to_all_itself, str(tmp_path))
    assert kind0 == "PlexusError" and text0.endswith(
        "in which rank 0 sends 3 elements to rank 0, which expects 5 from it"), text0
    assert kind1 == "PeerError" and "rank 0 failed a device collective" in text1, text1


@pytest.mark.parametrize("world", [2, 3])
def test_all_to_all_blocks_a_pair_disagrees_on_are_found_by_the_kernel(world, tmp_path):
    """The kernel compares the sizes of every pair (no host round): the ends of the pair raise a
    mismatch naming it, a third rank hears that a peer failed (on the emulated device at once; on a
    GPU, whose blocks may all be done by then, at its next call); the group stays failed; another
    dtype on one rank is a mismatch naming both calls. On 2 ranks each rank's own finding is
    certain (a rank marks its peer failed only after its peer's flag is there, and a waiting rank
    reads the flag first). On 3, a rank still waiting for the third may hear that its partner failed
    before it looks itself: then it raises PeerError, but whoever failed first found the mismatch."""
    res = run_ranks(world, _all_to_all_disagree, str(tmp_path))
    sizes_named, calls_named = [], []
    for rank, ((kind, text, rounds), again, kind2, text2) in enumerate(res):
        assert rounds == 0 and again, res
        heard = kind == "PeerError" and "failed a device collective" in text
        if rank < 2:
            sends = 4 * (world - 1) + 3 if rank == 1 else 4 * world
            mine = (f"mismatched device collectives: rank {rank} called all_to_all(dtype float32, count "
                    f"{sends}), in which rank 1 sends 3 elements to rank 0, which expects 4 from it")
            assert (kind == "PlexusError" and text == mine) or (world > 2 and heard), res
            sizes_named.append(text == mine)
        else:
            assert heard, text
        named = "called all_to_all(dtype int32, count " in text2 and "dtype float32" in text2
        assert named or (kind2 == "PeerError" and not (rank == world - 1 and world == 2)), text2
        calls_named.append(named)
    assert any(sizes_named) and any(calls_named), res
