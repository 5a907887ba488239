"""Collectives of device arrays between hosts straight through UCX (plexus.device.direct,
csrc/algorithms/port_flat, the message ports of csrc/transport/ucx) without a GPU: the tests' fake
device memory is host memory, which UCX is told it is, so every part but UCX's CUDA copies and the
CUDA reduction kernels runs here between real processes. Every pair is on UCX
(PLEXUS_TRANSPORTS=ucx) and every rank counts as a host of its own (PLEXUS_HOST_ID), as between
hosts with one rank each. Skipped without the libucx wheel."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import plexus
import reference as ref
from plexus import device
from test_cuda_ipc_logic import _collectives
from test_ucx import TIMEOUT, WHY_NOT, ucx_env
from test_ucx_device import _fake

pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "ok")


def _matrix(rank, world, folder):
    """The CUDA IPC tests' matrix (every dtype x op, sizes 0 to 65539, in place and not), every call
    through UCX, nothing staged."""
    from plexus.device import libraries

    checked = _collectives(rank, world, folder, through="ucx")
    log = libraries._OPS["cupy"].log
    return checked, [e for e in log if e[0] in ("d2h", "h2d")], any(e[0] == "device_empty" for e in log)


@pytest.mark.parametrize("world,tls", [(2, "tcp"), (3, "shm")])
def test_collectives_go_straight_through_ucx(world, tls, tmp_path):
    res = run(world, _matrix, tmp_path, tls)
    assert len({c for c, _, _ in res}) == 1 and res[0][0] > 0, res
    assert all(copies == [] and scratch for _, copies, scratch in res), res


def hosts(world, **env):
    """Each rank a host of its own (`env` for every rank too)."""
    return [dict(env, PLEXUS_HOST_ID=f"host{r}") for r in range(world)]


def run(world, fn, tmp_path, tls="tcp", rank_env=None, **env):
    from launch import run_ranks

    return run_ranks(world, fn, str(tmp_path), env=ucx_env(tls, **env), rank_env=rank_env or hosts(world),
                     timeout=TIMEOUT)


def _lists(rank, world, folder):
    """gather, scatter, all_to_all (blocks of different sizes) and the all_gather list form, in
    the float64 and int32 of prime-sized arrays, from every root."""
    fake, _ = _fake(folder, rank)
    for dtype in ("float64", "int32"):
        for count in (0, 1, 1009):
            case = f"lists/{dtype}/{count}"
            inputs = [ref.make_input(case, r, count, dtype) for r in range(world)]
            for root in range(world):
                outs = [fake.array(np.zeros(count, inputs[0].dtype)) for _ in range(world)] if rank == root else None
                plexus.gather(fake.array(inputs[rank]), outs, dst=root)
                if rank == root:
                    for p in range(world):
                        ref.assert_equal(outs[p].host, inputs[p], "SUM", f"gather {case} from {p} to {root}")
                out = fake.array(np.zeros(count, inputs[0].dtype))
                ins = [fake.array(inputs[p]) for p in range(world)] if rank == root else None
                plexus.scatter(out, ins, src=root)
                ref.assert_equal(out.host, inputs[rank], "SUM", f"scatter {case} from {root}")
            # all_to_all_single with uneven splits: rank r sends r + p + count elements to rank p
            sizes = [[r + p + count for p in range(world)] for r in range(world)]
            sent = [ref.make_input(f"{case}/a2a", r, sum(sizes[r]), dtype) for r in range(world)]
            got = fake.array(np.zeros(sum(sizes[p][rank] for p in range(world)), inputs[0].dtype))
            plexus.all_to_all_single(got, fake.array(sent[rank]), output_split_sizes=[sizes[p][rank] for p in range(world)],
                                     input_split_sizes=sizes[rank])
            want = np.concatenate([sent[p][sum(sizes[p][:rank]):sum(sizes[p][:rank + 1])] for p in range(world)])
            ref.assert_equal(got.host, want, "SUM", f"all_to_all_single {case}")
    return dict(device.PATHS)


def test_gather_scatter_and_all_to_all_go_through_ucx(tmp_path):
    res = run(3, _lists, tmp_path)
    assert all(set(paths) == {"ucx"} for paths in res), res


def _async_in_order(rank, world, folder):
    """Calls queued without waiting run in order, each into its own working memory."""
    fake, _ = _fake(folder, rank)
    xs = [fake.array(np.full(1001, (rank + 1) * (i + 1), np.float32)) for i in range(6)]
    works = [plexus.all_reduce(x, async_op=True) for x in xs]
    works.append(plexus.reduce_scatter_tensor(out := fake.array(np.zeros(3, np.int64)),
                                              fake.array(np.arange(3 * world, dtype=np.int64)), async_op=True))
    for w in works:
        w.wait()
    total = sum(range(1, world + 1))
    return [float(x.host[0]) for x in xs] == [total * (i + 1) for i in range(6)], out.host.tolist()


def test_async_calls_complete_in_order(tmp_path):
    res = run(2, _async_in_order, tmp_path)
    assert res == [(True, [0, 2, 4]), (True, [6, 8, 10])], res


def _mismatch(rank, world, folder):
    fake, _ = _fake(folder, rank)
    x = fake.array(np.ones(4, np.float32))
    comm = plexus.distributed._world("test").comm  # noqa: SLF001
    with pytest.raises(ValueError, match="take tags from 0 to 65535, not -1"):  # not the collectives' channel
        comm.send_direct(x.host.ctypes.data, 4, plexus._C.DTYPES.index("float32"), 1 - rank, -1, False)
    with pytest.raises(plexus.PlexusError) as e:
        if rank == 0:
            plexus.all_reduce(x)
        else:
            plexus.broadcast(x, src=0)
    return str(e.value)


def test_a_peer_in_another_call_is_named(tmp_path):
    res = run(2, _mismatch, tmp_path, PLEXUS_TIMEOUT="5")
    # ops before it: the group's setup, and the ranks agreeing that every pair reaches device memory
    assert re.search(r"collective mismatch: rank 1 called broadcast\(count=4, dtype=float32, root=0\) as op #(\d+) "
                     r"but rank 0 called all_reduce\(count=4, dtype=float32, op=sum\) as op #\1", res[1]), res
    assert re.search(r"all_reduce\(count=4, dtype=float32, op=sum\) #\d+: recv of 8 bytes from rank 1", res[0]), res


def _peer_dies(rank, world, folder):
    import os

    fake, _ = _fake(folder, rank)
    x = fake.array(np.ones(5, np.float32))
    plexus.all_reduce(x)  # the endpoints are up
    if rank == 1:
        time.sleep(1)
        os._exit(3)
    start = time.monotonic()
    with pytest.raises(plexus.PeerError) as e:
        plexus.all_reduce(x)
    return str(e.value), time.monotonic() - start


def test_a_dead_peer_fails_the_collective_well_before_the_deadline(tmp_path):
    from launch import collect, start_ranks

    procs, results = start_ranks(2, _peer_dies, str(tmp_path), env=ucx_env("tcp", PLEXUS_TIMEOUT="60"),
                                 rank_env=hosts(2))
    message, seconds = collect(procs, results, TIMEOUT, allow_failures=(1,))[0]
    assert re.search(r"all_reduce\(count=5, dtype=float32, op=sum\) #\d+: recv of 12 bytes from rank 1", message), message
    assert seconds < 50, seconds


def _other_paths(rank, world, folder):
    fake, _ = _fake(folder, rank)
    x = fake.array(np.full(7, rank + 1, np.float32))
    plexus.all_reduce(x)
    return x.host.tolist(), sorted(device.PATHS)


def test_one_rank_without_the_port_stages_every_rank(tmp_path):
    res = run(2, _other_paths, tmp_path, rank_env=hosts(2)[:1] + [dict(hosts(2)[1], PLEXUS_UCX_DEVICE="0")])
    assert res == [([3.0] * 7, ["staged: the group spans several hosts"])] * 2, res


def test_a_group_with_a_pair_off_ucx_stages_every_rank(tmp_path):
    """Ranks 0 and 1 share a host (shared memory between them, no message port), rank 2 is on
    another: every rank stages, none waits for the others through UCX."""
    env = [{"PLEXUS_HOST_ID": "a"}, {"PLEXUS_HOST_ID": "a"}, {"PLEXUS_HOST_ID": "b"}]
    res = run(3, _other_paths, tmp_path, rank_env=env, PLEXUS_TRANSPORTS="shm,ucx", PLEXUS_TIMEOUT="30")
    assert res == [([6.0] * 7, ["staged: the group spans several hosts"])] * 3, res


def test_groups_on_one_host_keep_cuda_ipc(tmp_path):
    res = run(2, _other_paths, tmp_path, rank_env=[{}, {}])
    assert res == [([3.0] * 7, ["cuda_ipc"])] * 2, res


def test_the_all_reduce_benchmark_runs_through_ucx_on_fake_memory():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "device_messages.py")
    out = subprocess.run([sys.executable, script, "--emulated", "--ucx", "tcp,self", "--all-reduce", "--max", "4K",
                          "--iters", "2", "--rounds", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:] if not line.startswith("#")]
    assert "# ucx: ['ucx']" in out.stdout and "# staged: ['staged: " in out.stdout, out.stdout
    assert "us per all_reduce" in out.stdout.splitlines()[0], out.stdout
    assert [int(r[0]) for r in rows[::2]] == [4, 16, 64, 256, 1024, 4096], out.stdout
    assert [r[1] for r in rows] == ["ucx", "staged"] * 6 and all(r[-1].endswith("x") for r in rows[::2]), out.stdout
