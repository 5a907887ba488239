"""Native device messages (send/recv of device arrays: plexus.device.native.message, the lanes of
csrc/core/device_lanes, the kSend/kRecv programs of csrc/algorithms/device_programs.h) without a
GPU: FakeCuda(native=True) runs the same C++ protocol on the emulated device between real
processes, each lane a thread. Covers every dtype and sizes from 0 to many inbox slots against
numpy, both orders of an exchange, long runs of messages in one direction, ring shifts on 3 and
4 ranks, a mismatch, an absent receiver, and the cases that stay staged (before the group's first
device collective, tagged messages)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import plexus
from fake_cuda import FakeCuda
from launch import run_ranks
from plexus import device
from plexus.device import ipc, libraries
from test_cuda_ipc_logic import DTYPES


def _fake(folder, rank) -> FakeCuda:
    from test_device_logic import FakeOps

    fake = FakeCuda(folder, rank, native=True)
    ipc.set_driver(fake)
    libraries._OPS["cupy"] = FakeOps()  # what is staged, staged through the fake memory
    device.PATHS.clear()
    return fake


def _set_up(fake) -> None:
    plexus.all_reduce(fake.array(np.ones(4, np.float32)))  # the group's native path, set up here


def _values(dtype: str, count: int, seed: int) -> np.ndarray:
    import reference as ref

    return ref.make_input(f"message/{dtype}/{count}", seed, count, dtype)


def _exchange(rank, world, folder):
    """Every dtype and size, each rank sending to the next and receiving from the one before:
    sends first on even calls, receives first on odd ones (a lane each, so neither order waits
    on the other)."""
    fake = _fake(folder, rank)
    _set_up(fake)
    to, frm = (rank + 1) % world, (rank - 1) % world
    slot = plexus.distributed._world("test")._native.comm.slot_bytes  # noqa: SLF001
    checked = 0
    for i, dtype in enumerate(DTYPES):
        for count in (0, 1, 7, 1009, 3 * slot + 5):
            mine = _values(dtype, count, rank)
            out = fake.array(np.zeros_like(mine), offset=8)
            src = fake.array(mine, offset=4 * (i % 3))
            if (i + count) % 2:
                works = [plexus.isend(src, to), plexus.irecv(out, frm)]
            else:
                works = [plexus.irecv(out, frm), plexus.isend(src, to)]
            for w in works:
                w.wait()
            assert works[0 if (i + count) % 2 == 0 else 1].source == frm
            np.testing.assert_array_equal(out.host, _values(dtype, count, frm), f"{dtype} x {count} from {frm}")
            checked += 1
    return checked, device.PATHS["native"], sorted(device.PATHS)


@pytest.mark.parametrize("world,scratch", [(2, ""), (2, "1024"), (3, "1024"), (4, "")])
def test_messages_run_natively_and_match_numpy(world, scratch, tmp_path):
    env = {"PLEXUS_DEVICE_SCRATCH": scratch} if scratch else {}
    res = run_ranks(world, _exchange, str(tmp_path), env=env, timeout=600)
    n = len(DTYPES) * 5
    assert res == [(n, 1 + 2 * n, ["native"])] * world, res


def _one_way(rank, world, folder):
    """Rank 0 sends 40 messages before rank 1 receives any: the sends wait on their lane for
    room in the inbox, not on the caller, and arrive in order; then the blocking forms."""
    fake = _fake(folder, rank)
    _set_up(fake)
    n = 40
    if rank == 0:
        works = [plexus.isend(fake.array(np.full(300 + i, i, np.int32)), 1) for i in range(n)]
        for w in works:
            w.wait()
        plexus.send(fake.array(np.arange(5, dtype=np.float64)), 1)
        got = fake.array(np.zeros(3, np.int64))
        assert plexus.recv(got, 1) == 1
        return got.host.tolist()
    time.sleep(0.5)
    outs = [fake.array(np.zeros(300 + i, np.int32)) for i in range(n)]
    for i, out in enumerate(outs):
        plexus.irecv(out, 0).wait()
        assert (out.host == i).all(), (i, out.host[:4])
    last = fake.array(np.zeros(5, np.float64))
    assert plexus.recv(last, 0) == 0
    plexus.send(fake.array(np.array([7, 8, 9], np.int64)), 0)
    return last.host.tolist()


def test_a_run_of_messages_in_one_direction_arrives_in_order(tmp_path):
    res = run_ranks(2, _one_way, str(tmp_path), env={"PLEXUS_DEVICE_SCRATCH": "1024"})
    assert res == [[7, 8, 9], [0.0, 1.0, 2.0, 3.0, 4.0]], res


def _mismatch(rank, world, folder):
    fake = _fake(folder, rank)
    _set_up(fake)
    if rank == 0:
        plexus.send(fake.array(np.ones(5, np.float32)), 1)
        time.sleep(1)  # the receiver finds the mismatch and tells this rank
        with pytest.raises(plexus.PeerError, match="rank 1 failed a device collective"):
            plexus.all_reduce(fake.array(np.ones(4, np.float32)))
        return "peer"
    with pytest.raises(plexus.PlexusError) as e:
        plexus.recv(fake.array(np.ones(4, np.float32)), 0)
    text = str(e.value)
    assert "mismatched device messages: rank 1 called recv(dtype float32, count 4) but rank 0 called " \
           "send(dtype float32, count 5)" in text, text
    with pytest.raises(plexus.PlexusError, match="mismatched device messages"):  # it stays failed
        plexus.all_reduce(fake.array(np.ones(4, np.float32)))
    return "mismatch"


def test_a_message_of_another_size_fails_naming_both_calls(tmp_path):
    assert run_ranks(2, _mismatch, str(tmp_path)) == ["peer", "mismatch"]


def _absent_receiver(rank, world, folder):
    """Rank 1 never receives: rank 0's third send finds no room in the inbox and times out."""
    fake = _fake(folder, rank)
    _set_up(fake)
    if rank == 1:
        time.sleep(4)
        return "absent"
    t0 = time.monotonic()
    works = [plexus.isend(fake.array(np.ones(8, np.float32)), 1) for _ in range(3)]
    works[0].wait()
    works[1].wait()
    with pytest.raises(plexus.CollectiveTimeout, match=r"send\(dtype float32, count 8\): rank 0 waited on the GPU "
                                                       r"for rank 1 past the timeout"):
        works[2].wait()
    return round(time.monotonic() - t0)


def test_a_receiver_that_never_comes_times_the_sender_out(tmp_path):
    res = run_ranks(2, _absent_receiver, str(tmp_path), env={"PLEXUS_TIMEOUT": "1.5"})
    assert res[1] == "absent" and 1 <= res[0] <= 3, res


def _teardown(rank, world, folder):
    """Rank 1 never receives; rank 0's third send waits for room when the group is destroyed:
    the message is aborted, not waited out to its deadline (60 s here)."""
    fake = _fake(folder, rank)
    _set_up(fake)
    if rank == 1:
        time.sleep(3)
        return "absent"
    works = [plexus.isend(fake.array(np.ones(8, np.float32)), 1) for _ in range(3)]
    assert works[0].source == -1  # (a send has no source)
    time.sleep(0.5)
    g = plexus.distributed._world("test")  # noqa: SLF001
    assert g._native.comm.messages_pending()  # noqa: SLF001
    t0 = time.monotonic()
    plexus.destroy_process_group()
    return round(time.monotonic() - t0)


def test_destroying_the_group_aborts_a_message_still_waiting(tmp_path):
    res = run_ranks(2, _teardown, str(tmp_path), env={"PLEXUS_TIMEOUT": "60"})
    assert res[1] == "absent" and res[0] <= 5, res


def _staged_before_set_up(rank, world, folder):
    """A message before the group's first device collective is staged, and the ranks that
    staged one say so at the setup: the group's messages then stay staged, every rank alike
    (rank 1's receive is posted before its setup, rank 0's send after its own)."""
    fake = _fake(folder, rank)
    peer = 1 - rank
    if rank == 1:
        out = fake.array(np.zeros(6, np.float32))
        w = plexus.irecv(out, peer)
        _set_up(fake)
        w.wait()
    else:
        _set_up(fake)
        plexus.send(fake.array(np.arange(6, dtype=np.float32)), peer)
        out = None
    x = fake.array(np.full(3, rank, np.float32))
    if rank == 0:
        plexus.send(x, 1)
    else:
        plexus.recv(x, 0)
    g = plexus.distributed._world("test")  # noqa: SLF001
    return (out.host.tolist() if out is not None else None, x.host.tolist(), g._native.messages.why,  # noqa: SLF001
            device.PATHS["native"])


def test_messages_before_the_first_device_collective_keep_the_group_staged(tmp_path):
    res = run_ranks(2, _staged_before_set_up, str(tmp_path))
    why = "rank 1 sent or received device arrays before the group's first device collective"
    assert res[0][0] is None and res[1][0] == [0, 1, 2, 3, 4, 5], res
    assert res[0][1] == res[1][1] == [0, 0, 0], res
    assert all(why in r[2] for r in res) and [r[3] for r in res] == [1, 1], res


def _tagged_and_any_source(rank, world, folder):
    fake = _fake(folder, rank)
    _set_up(fake)
    x = fake.array(np.full(4, rank + 1, np.int32))
    if rank == 0:
        plexus.send(x, 1, tag=5)
        plexus.send(x, 1)
        return device.PATHS["native"]
    got = fake.array(np.zeros(4, np.int32))
    assert plexus.recv(got, 0, tag=5) == 0  # staged, matched by tag
    with pytest.raises(ValueError, match="from any source cannot meet the group's native messages"):
        plexus.recv(got, None)
    plexus.recv(got, 0)
    return got.host.tolist(), device.PATHS["native"]


def test_tagged_messages_are_staged_and_any_source_is_refused(tmp_path):
    assert run_ranks(2, _tagged_and_any_source, str(tmp_path)) == [2, ([1, 1, 1, 1], 2)]


def test_the_messages_benchmark_runs_on_the_emulated_device():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "device_messages.py")
    out = subprocess.run([sys.executable, script, "--emulated", "--max", "4K", "--iters", "2", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if not line.startswith("#")]
    assert "# native: ['native']" in out.stdout, out.stdout
    assert [int(r[0]) for r in rows] == [4, 16, 64, 256, 1024, 4096] and {r[1] for r in rows} == {"native"}, out.stdout
