"""The shared-memory transport: chosen for ranks of one host, restricted by PLEXUS_TRANSPORTS,
used both by the direct intra-host algorithms and as a byte stream under the ring algorithms,
never leaving anything in /dev/shm, and falling back to TCP when /dev/shm is too small."""

from __future__ import annotations

import glob
import os
import signal
import time

import numpy as np
import pytest

import plexus
import reference as ref
from launch import collect, run_ranks, start_ranks

# Forces the ring/chain algorithms, whose local peers then talk through shared-memory rings.
STREAM_ALGOS = "allreduce:@ring#allgather:@ring#reducescatter:@ring#broadcast:@chain#reduce:@chain#barrier:@dissemination"


def leftovers():
    return sorted(glob.glob("/dev/shm/plexus-*"))


def transports(rank, world):
    comm = plexus.distributed._state.world.comm
    return [comm.transport_to(p) if p != rank else "self" for p in range(world)]


@pytest.mark.parametrize("env, want", [({}, "shm"), ({"PLEXUS_TRANSPORTS": "tcp"}, "tcp"), ({"PLEXUS_TRANSPORTS": "shm"}, "shm")])
def test_transport_choice_per_peer(env, want):
    for rank, row in enumerate(run_ranks(3, transports, env=env)):
        assert row == [want if p != rank else "self" for p in range(3)], row


def mixed_collectives(rank, world):
    """A few of each collective with sizes that wrap a small ring many times."""
    checked = 0
    for count in [0, 1, 7, 1000, 70001]:
        for dtype, op in [("float32", "SUM"), ("int64", "MAX"), ("bfloat16", "SUM"), ("float64", "AVG")]:
            case = f"mixed/{dtype}/{op}/{count}"
            inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
            want = ref.reduce_ref(inputs, op, dtype)
            x = inputs[rank].copy()
            plexus.all_reduce(x, op=ref.plexus_op(op))
            ref.assert_equal(x, want, op, f"all_reduce {case}")
            out = np.zeros(count * world, dtype=x.dtype)
            plexus.all_gather_into_tensor(out, inputs[rank])
            ref.assert_equal(out, np.concatenate(inputs), "SUM", f"all_gather {case}")
            full = [ref.make_input(case + "/rs", r, count * world, dtype, op) for r in range(world)]
            out = np.zeros(count, dtype=x.dtype)
            plexus.reduce_scatter_tensor(out, full[rank], op=ref.plexus_op(op))
            ref.assert_equal(out, ref.reduce_ref(full, op, dtype)[rank * count:(rank + 1) * count], op, f"reduce_scatter {case}")
            y = inputs[rank].copy()
            plexus.broadcast(y, src=count % world)
            ref.assert_equal(y, inputs[count % world], "SUM", f"broadcast {case}")
            z = inputs[rank].copy()
            plexus.reduce(z, dst=(count + 1) % world, op=ref.plexus_op(op))
            if rank == (count + 1) % world:
                ref.assert_equal(z, want, op, f"reduce {case}")
            plexus.barrier()
            checked += 1
    return checked


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_algorithms_over_shared_memory_streams(world):
    env = {"PLEXUS_TRANSPORTS": "shm", "PLEXUS_ALGO": STREAM_ALGOS, "PLEXUS_SHM_RING_BYTES": "4096", "PLEXUS_CHUNK_BYTES": "8192"}
    assert all(c > 0 for c in run_ranks(world, mixed_collectives, env=env))


@pytest.mark.parametrize("world", [2, 3])
def test_direct_algorithms_with_small_rounds(world):
    # Tiny rounds and staging buffers: many rounds per op, both parities, partial last rounds.
    env = {"PLEXUS_SHM_ROUND_BYTES": "4096", "PLEXUS_SHM_STAGING_BYTES": "16384"}
    assert all(c > 0 for c in run_ranks(world, mixed_collectives, env=env))


def test_no_segments_left_after_a_run():
    before = leftovers()
    run_ranks(3, mixed_collectives)
    assert leftovers() == before


def small_dev_shm(rank, world):
    comm = plexus.distributed._state.world.comm
    x = np.full(10, rank + 1, dtype=np.float32)
    plexus.all_reduce(x)
    return comm.transport_to(1 - rank), float(x[0])


def test_falls_back_to_tcp_with_a_warning_when_dev_shm_is_too_small(capfd):
    # Ask for more staging memory than /dev/shm can hold.
    env = {"PLEXUS_SHM_STAGING_BYTES": "1024G"}
    results = run_ranks(2, small_dev_shm, env=env)
    assert results == [("tcp", 3.0), ("tcp", 3.0)]
    err = capfd.readouterr().err
    assert "/dev/shm has" in err and "falling back to TCP" in err


def forced_shm_fails(rank, world):
    try:
        plexus.init_process_group(init_method=os.environ["RDV"], rank=rank, world_size=world, timeout=30)
    except plexus.PlexusError as e:
        return str(e)
    return "no error"


def test_forcing_shm_when_it_cannot_work_is_an_error(tmp_path):
    env = {"PLEXUS_SHM_STAGING_BYTES": "1024G", "PLEXUS_TRANSPORTS": "shm", "RDV": f"file://{tmp_path}/rdv"}
    for msg in run_ranks(2, forced_shm_fails, env=env, join_group=False):
        assert "PLEXUS_TRANSPORTS=shm" in msg and "not usable" in msg, msg


def loop_until_killed(rank, world, marker_dir):
    x = np.ones(1 << 20, dtype=np.float32)
    plexus.all_reduce(x)
    open(os.path.join(marker_dir, f"ready{rank}"), "w").close()
    try:
        while True:
            plexus.all_reduce(x)
    except plexus.PlexusError as e:
        return time.time(), type(e).__name__, str(e)


def test_killed_rank_during_shm_all_reduce(tmp_path):
    before = leftovers()
    procs, results = start_ranks(3, loop_until_killed, str(tmp_path))
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in range(3)):
        assert time.time() < deadline, "ranks never started"
        time.sleep(0.05)
    time.sleep(0.2)
    killed_at = time.time()
    os.kill(procs[1].pid, signal.SIGKILL)
    out = collect(procs, results, timeout=120, allow_failures=(1,))
    for rank in (0, 2):
        when, kind, msg = out[rank]
        assert kind in ("PeerError", "PlexusError"), (rank, kind, msg)
        assert "rank 1" in msg, msg
        assert when - killed_at < 30, f"rank {rank} took {when - killed_at:.1f} s to notice"
    assert leftovers() == before


def mismatch(rank, world):
    try:
        if rank == 0:
            plexus.all_reduce(np.ones(10, dtype=np.float32))
        else:
            plexus.all_gather_into_tensor(np.ones(10 * world, dtype=np.float32), np.ones(10, dtype=np.float32))
    except plexus.PlexusError as e:
        return str(e)
    return "no error"


def test_collective_mismatch_over_shared_memory():
    for msg in run_ranks(2, mismatch, timeout=120):
        assert "mismatch" in msg and "all_reduce" in msg and "all_gather" in msg, msg


def _reduce_then_leave(rank, world):
    """Rank 1 gives its part of a reduce and leaves at once (a non-root does not wait for the
    root), while rank 0 still waits for the late rank 2: a rank that finished the call and left
    (its segment says so) is no error for those still in it."""
    x = np.full(64, rank + 1.0, np.float32)
    if rank == 2:
        time.sleep(1.0)
    plexus.reduce(x, dst=0)
    if rank == 1:
        plexus.destroy_process_group()
        time.sleep(2.0)
    return float(x[0]) if rank == 0 else None


def test_a_rank_that_finished_and_left_is_no_error():
    assert run_ranks(3, _reduce_then_leave)[0] == 6.0


def _explain_cma(rank, world):
    line = next(ln for ln in str(plexus.explain("all_reduce", 64 << 20)).splitlines() if "shm_cma" in ln)
    return "cannot run" not in line


def test_cma_is_probed_at_setup_and_plexus_cma_0_turns_it_off():
    if not all(run_ranks(2, _explain_cma)):
        pytest.skip("process_vm_readv between these ranks is not allowed here (ptrace rules)")
    assert not any(run_ranks(2, _explain_cma, env={"PLEXUS_CMA": "0"}))  # the tuner keeps staging


@pytest.mark.parametrize("world", [2, 3, 4])
def test_cma_all_reduce_matches_numpy(world):
    """shm_cma (peers' buffers read with process_vm_readv) over every dtype, op and count, in
    and out of place, as test_collectives checks the others."""
    from test_collectives import check_all_reduce

    if not all(run_ranks(2, _explain_cma)):
        pytest.skip("process_vm_readv between these ranks is not allowed here (ptrace rules)")
    checked = run_ranks(world, check_all_reduce, timeout=900, env={"PLEXUS_ALGO": "allreduce:@shm_cma"})
    assert all(c == checked[0] and c > 0 for c in checked), checked
