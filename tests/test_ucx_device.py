"""Device messages between hosts straight through UCX (plexus.device.direct, the message port of
csrc/transport/ucx, csrc/core/direct_messages) without a GPU: the tests' fake device memory is
host memory, which UCX is told it is, so every part of the path but UCX's own CUDA copies runs
here between real processes: the decision both ends make, the framing, matching in order per
(peer, tag), a receive that disagrees with its send, a missing sender, and what stays staged.
UCX runs over TCP or shared memory (UCX_TLS) with PLEXUS_TRANSPORTS=ucx, as in test_ucx.py.
Skipped where the libucx wheel is not installed."""

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
from test_ucx import TIMEOUT, WHY_NOT, ucx_env

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "ok")


def _fake(folder, rank):
    from test_device_logic import FakeOps

    fake = FakeCuda(folder, rank)
    ipc.set_driver(fake)
    ops = libraries._OPS["cupy"] = FakeOps()  # logs the syncs, and the copies if anything is staged
    device.PATHS.clear()
    return fake, ops


def _values(dtype: str, count: int, seed: int) -> np.ndarray:
    import reference as ref

    return ref.make_input(f"direct/{dtype}/{count}", seed, count, dtype)


def _ring(rank, world, folder):
    """Every dtype and size (3 Mi elements and more cross UCX's rendezvous), each rank sending to
    the next and receiving from the one before, in both orders, tags 0 and 7 alternating."""
    fake, ops = _fake(folder, rank)
    to, frm = (rank + 1) % world, (rank - 1) % world
    checked = 0
    for i, dtype in enumerate(DTYPES):
        for count in (0, 1, 7, 1009) + ((3 << 20) + 7,) * (i % 4 == 0):
            tag = 7 * (i % 2)
            mine = _values(dtype, count, rank)
            out = fake.array(np.zeros_like(mine), offset=8)
            src = fake.array(mine, offset=4 * (i % 3))
            if (i + count) % 2:
                works = [plexus.isend(src, to, tag=tag), plexus.irecv(out, frm, tag=tag)]
            else:
                works = [plexus.irecv(out, frm, tag=tag), plexus.isend(src, to, tag=tag)]
            for w in works:
                w.wait()
            np.testing.assert_array_equal(out.host, _values(dtype, count, frm), f"{dtype} x {count} from {frm}")
            checked += 1
    plexus.send(fake.array(np.arange(5, dtype=np.int32)), to)  # the blocking forms (small: UCX buffers them)
    out = fake.array(np.zeros(5, np.int32))
    plexus.recv(out, frm)
    assert out.host.tolist() == list(range(5))
    copies = [e for e in ops.log if e[0] in ("d2h", "h2d")]
    return checked, dict(device.PATHS), copies, "sync" in {e[0] for e in ops.log}


@pytest.mark.parametrize("world,tls", [(2, "tcp"), (3, "shm")])
def test_device_messages_go_straight_through_ucx(world, tls, tmp_path):
    res = run_ranks(world, _ring, str(tmp_path), env=ucx_env(tls), timeout=TIMEOUT)
    n = sum(4 + (i % 4 == 0) for i in range(len(DTYPES)))
    assert res == [(n, {"ucx": 2 * n + 2}, [], True)] * world, res


def _tags_out_of_order(rank, world, folder):
    """Messages match in order per tag, whatever order the receives are posted in."""
    fake, _ = _fake(folder, rank)
    if rank == 0:
        for tag, value in ((1, 10), (2, 20), (1, 11)):
            plexus.send(fake.array(np.full(3, value, np.float32)), 1, tag=tag)
        return None
    outs = {k: fake.array(np.zeros(3, np.float32)) for k in ("2", "1a", "1b")}
    works = [plexus.irecv(outs["2"], 0, tag=2), plexus.irecv(outs["1a"], 0, tag=1), plexus.irecv(outs["1b"], 0, tag=1)]
    for w in works:
        w.wait()
    return {k: v.host.tolist() for k, v in outs.items()}


def test_tags_match_in_order_per_tag(tmp_path):
    res = run_ranks(2, _tags_out_of_order, str(tmp_path), env=ucx_env("tcp"), timeout=TIMEOUT)
    assert res[1] == {"2": [20.0] * 3, "1a": [10.0] * 3, "1b": [11.0] * 3}, res


def _mismatch(rank, world, folder):
    fake, _ = _fake(folder, rank)
    if rank == 0:
        plexus.send(fake.array(np.ones(4, np.float64)), 1)
        plexus.send(fake.array(np.ones(0, np.float32)), 1, tag=1)  # empty, to a receive of 3
        return "sent"
    with pytest.raises(ValueError) as e:
        plexus.recv(fake.array(np.zeros(5, np.float32)), 0)
    with pytest.raises(ValueError) as empty:
        plexus.recv(fake.array(np.zeros(3, np.float32)), 0, tag=1)
    return str(e.value), str(empty.value)


def test_a_receive_that_disagrees_with_its_send_names_both(tmp_path):
    res = run_ranks(2, _mismatch, str(tmp_path), env=ucx_env("tcp", PLEXUS_TIMEOUT="60"), timeout=TIMEOUT)
    assert res[0] == "sent"
    assert "recv of 20 bytes of float32 with tag 0: rank 0 sent 32 bytes of float64" in res[1][0], res
    assert "recv of 12 bytes of float32 with tag 1: rank 0 sent 0 bytes of float32" in res[1][1], res


def _no_sender(rank, world, folder):
    fake, _ = _fake(folder, rank)
    if rank == 0:
        time.sleep(6)  # alive, sending nothing, past the receiver's deadline
        return ""
    with pytest.raises(plexus.CollectiveTimeout) as e:
        plexus.recv(fake.array(np.zeros(3, np.float32)), 0)
    return str(e.value)


def test_a_receive_whose_sender_never_sends_times_out(tmp_path):
    res = run_ranks(2, _no_sender, str(tmp_path), env=ucx_env("tcp", PLEXUS_TIMEOUT="3"), timeout=TIMEOUT)
    assert "recv of 12 bytes of float32 from rank 0 with tag 0 timed out after 3 s" in res[1], res


def _staged(rank, world, folder):
    """What stays staged, on both ends alike: tags from 65536 on; what is refused: a receive from
    any source, and a message under CUDA graph capture."""
    fake, ops = _fake(folder, rank)
    x = fake.array(np.arange(6, dtype=np.float32) * (rank + 1))
    works = [plexus.isend(x, 1 - rank, tag=70000), plexus.irecv(out := fake.array(np.zeros(6, np.float32)), 1 - rank,
                                                                 tag=70000)]
    for w in works:
        w.wait()
    any_source = ""
    try:
        plexus.recv(fake.array(np.zeros(1, np.float32)))
    except ValueError as e:
        any_source = str(e)
    fake.capture = True  # the caller's stream is being captured: refused before anything moves
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        plexus.isend(x, 1 - rank)
    return out.host.tolist(), dict(device.PATHS), len([e for e in ops.log if e[0] == "d2h"]) > 0, any_source


def test_large_tags_stay_staged_and_any_source_and_capture_are_refused(tmp_path):
    res = run_ranks(2, _staged, str(tmp_path), env=ucx_env("tcp"), timeout=TIMEOUT)
    for rank, (out, paths, staged, any_source) in enumerate(res):
        assert out == (np.arange(6) * (2 - rank)).tolist() and "ucx" not in paths and staged, res
        assert "cannot meet the device messages of peers on other hosts" in any_source, res


def _off(rank, world, folder):
    fake, ops = _fake(folder, rank)
    x = fake.array(np.arange(6, dtype=np.float32) * (rank + 1))
    out = fake.array(np.zeros(6, np.float32))
    works = [plexus.isend(x, 1 - rank), plexus.irecv(out, 1 - rank)]
    for w in works:
        w.wait()
    return out.host.tolist(), "ucx" in device.PATHS, any(e[0] == "d2h" for e in ops.log)


def test_a_rank_that_turns_the_port_off_stages_its_pairs(tmp_path):
    rank_env = [{"PLEXUS_UCX_DEVICE": "0"}, {}]  # one rank says so: both ends of the pair agree
    res = run_ranks(2, _off, str(tmp_path), env=ucx_env("tcp"), rank_env=rank_env, timeout=TIMEOUT)
    assert res == [((np.arange(6) * 2).tolist(), False, True), (np.arange(6).tolist(), False, True)], res


def _sender_dies(rank, world, folder):
    """Rank 0 dies while rank 1 waits for its message: a PeerError well before the deadline."""
    import os

    fake, _ = _fake(folder, rank)
    out = fake.array(np.zeros(3, np.float32))
    if rank == 0:
        plexus.send(fake.array(np.ones(3, np.float32)), 1)  # the pair's endpoints are up
        time.sleep(1)
        os._exit(3)
    plexus.recv(out, 0)
    start = time.monotonic()
    with pytest.raises(plexus.PeerError) as e:
        plexus.recv(out, 0)
    return str(e.value), time.monotonic() - start


def test_a_receive_whose_sender_died_raises_peer_error(tmp_path):
    from launch import collect, start_ranks

    procs, results = start_ranks(2, _sender_dies, str(tmp_path), env=ucx_env("tcp", PLEXUS_TIMEOUT="60"))
    res = collect(procs, results, TIMEOUT, allow_failures=(0,))
    message, seconds = res[1]
    assert "recv of 12 bytes of float32 from rank 0 with tag 0" in message and seconds < 50, res


def test_the_messages_benchmark_runs_through_ucx_on_fake_memory():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "device_messages.py")
    out = subprocess.run([sys.executable, script, "--emulated", "--ucx", "tcp,self", "--max", "4K", "--iters", "2",
                          "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if not line.startswith("#")]
    assert "# ucx: ['ucx']" in out.stdout and "# staged: []" in out.stdout, out.stdout  # staged messages are not counted
    assert [int(r[0]) for r in rows[::2]] == [4, 16, 64, 256, 1024, 4096], out.stdout
    assert [r[1] for r in rows] == ["ucx", "staged"] * 6 and all(r[-1].endswith("x") for r in rows[::2]), out.stdout


def _destroyed_while_waiting(rank, world, folder):
    """A receive still waiting when its group is destroyed fails at once, naming why."""
    fake, _ = _fake(folder, rank)
    if rank == 0:
        time.sleep(3)  # sends nothing, and stays until rank 1 has torn down
        return None
    work = plexus.irecv(fake.array(np.zeros(3, np.float32)), 0)
    start = time.monotonic()
    plexus.destroy_process_group()
    with pytest.raises(plexus.PlexusError, match=r"recv of 12 bytes .* rank 0 .*destroy_process_group\(\) was called"):
        work.wait()
    return time.monotonic() - start


def test_a_receive_waiting_at_teardown_fails(tmp_path):
    res = run_ranks(2, _destroyed_while_waiting, str(tmp_path), env=ucx_env("tcp", PLEXUS_TIMEOUT="60"),
                    timeout=TIMEOUT)
    assert res[1] < 30, res
