"""A rank killed anywhere raises everywhere: rank 1 of 3 is SIGKILLed at a named point of a job's
life (during the rendezvous, during shared-memory setup, between collectives, in the middle of
each all-reduce algorithm and of all_gather, reduce_scatter, broadcast, all_to_all, in a send,
when a group is made, in a staged device call), over shared memory and over TCP. Every survivor
must raise PeerError or CollectiveTimeout naming rank 1 within the group's timeout (short here),
nothing may hang, and /dev/shm must hold nothing of the job afterwards.

The victim dies by SIGKILL, at the point itself: base/fault.h's fault points (armed through
_C._arm_fault) for points inside the core, os.kill for the others."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from launch import start_ranks

VICTIM, WORLD = 1, 3
TIMEOUT = 8.0  # the group's timeout: a survivor that waits for it must still finish
SIZE = 1 << 18  # elements: collectives long enough to be killed in the middle of


def _init(rank, init_method):
    import plexus

    plexus.init_process_group(init_method=init_method, rank=rank, world_size=WORLD, timeout=TIMEOUT)


def _loop(call, rounds=40):
    for _ in range(rounds):
        call()


def p_rendezvous(rank, init_method):
    import plexus

    if rank == VICTIM:
        plexus._C._arm_fault("rendezvous")
    _init(rank, init_method)
    plexus.barrier()


def p_shm_setup(rank, init_method):
    import plexus

    if rank == VICTIM:
        plexus._C._arm_fault("shm_setup")
    _init(rank, init_method)
    plexus.barrier()


def p_between(rank, init_method):
    import plexus

    _init(rank, init_method)
    plexus.all_reduce(np.ones(8, np.float32))
    if rank == VICTIM:
        os.kill(os.getpid(), signal.SIGKILL)
    _loop(lambda: plexus.all_reduce(np.ones(SIZE, np.float32)))


def mid(collective, fault):
    """The victim dies at its third arrival at `fault` while all ranks run `collective`."""

    def point(rank, init_method):
        import plexus

        _init(rank, init_method)
        plexus.barrier()
        n = WORLD
        x, out = np.ones(SIZE * n, np.float32), np.ones(SIZE * n, np.float32)
        calls = {
            "all_reduce": lambda: plexus.all_reduce(x),
            "all_gather": lambda: plexus.all_gather_into_tensor(out, x[:SIZE]),
            "reduce_scatter": lambda: plexus.reduce_scatter_tensor(out[:SIZE], x),
            "broadcast": lambda: plexus.broadcast(x, src=0),
            "all_to_all": lambda: plexus.all_to_all_single(out, x),
        }
        if rank == VICTIM:
            plexus._C._arm_fault(fault, 3)
        _loop(calls[collective])

    return point


def p_send(rank, init_method):
    import plexus

    _init(rank, init_method)
    plexus.barrier()
    big = np.ones(1 << 27, np.uint8)  # more than socket buffers hold: the rest never leaves
    if rank == VICTIM:
        plexus._C._arm_fault("p2p_send", 1)  # its first bytes are on the way: in the middle of it
        plexus.send(big, dst=0)
    plexus.recv(big, src=VICTIM)


def p_new_group(rank, init_method):
    import plexus

    _init(rank, init_method)
    plexus.barrier()
    if rank == VICTIM:
        os.kill(os.getpid(), signal.SIGKILL)
    g = plexus.new_group(list(range(WORLD)))
    plexus.all_reduce(np.ones(4, np.float32), group=g)


def p_device_staged(rank, init_method):
    import plexus
    from plexus.device import libraries
    from test_device_logic import FakeDeviceArray, FakeOps

    libraries._OPS["cupy"] = FakeOps()  # host memory posing as device memory: staged calls
    _init(rank, init_method)
    plexus.barrier()
    x = FakeDeviceArray(np.ones(SIZE, np.float32))
    if rank == VICTIM:
        plexus._C._arm_fault("send" if os.environ.get("PLEXUS_TRANSPORTS") == "tcp" else "shm_round", 3)
    _loop(lambda: plexus.all_reduce(x))


# point -> (function, env, transports it applies to)
SHM, TCP = "default", "tcp"
POINTS = {
    "rendezvous": (p_rendezvous, {}, (SHM, TCP)),
    "shm_setup": (p_shm_setup, {}, (SHM,)),
    "between collectives": (p_between, {}, (SHM, TCP)),
    "all_reduce ring": (mid("all_reduce", "send"), {"PLEXUS_ALGO": "allreduce:@ring"}, (SHM, TCP)),
    "all_reduce tree": (mid("all_reduce", "send"), {"PLEXUS_ALGO": "allreduce:@tree"}, (SHM, TCP)),
    "all_reduce rhd": (mid("all_reduce", "send"), {"PLEXUS_ALGO": "allreduce:@rhd"}, (SHM, TCP)),
    "all_reduce shm_oneshot": (mid("all_reduce", "shm_round"), {"PLEXUS_ALGO": "allreduce:@shm_oneshot"}, (SHM,)),
    "all_reduce shm_twoshot": (mid("all_reduce", "shm_round"), {"PLEXUS_ALGO": "allreduce:@shm_twoshot"}, (SHM,)),
    "all_reduce shm_cma": (mid("all_reduce", "shm_round"), {"PLEXUS_ALGO": "allreduce:@shm_cma"}, (SHM,)),
    "all_gather": (None, {}, (SHM, TCP)),
    "reduce_scatter": (None, {}, (SHM, TCP)),
    "broadcast": (None, {}, (SHM, TCP)),
    "all_to_all": (mid("all_to_all", "send"), {}, (SHM, TCP)),
    "send": (p_send, {}, (SHM, TCP)),
    "new_group": (p_new_group, {}, (SHM, TCP)),
    "device arrays staged": (p_device_staged, {}, (SHM, TCP)),
}
CASES = [(point, t) for point, (_, _, ts) in POINTS.items() for t in ts]


def _fn(point, transport):
    fn, _, _ = POINTS[point]
    if fn is None:  # over shared memory these run the direct algorithms; over TCP the generic ones
        fn = mid(point, "shm_round" if transport == SHM else "send")
    return fn


def _case(rank, world, point, transport, init_method):
    import plexus

    t0 = time.monotonic()
    try:
        _fn(point, transport)(rank, init_method)
    except Exception as e:  # noqa: BLE001 - what the survivor raised is the result
        error = (type(e).__name__, str(e))
    else:
        error = (None, "returned without an error")
    seconds = time.monotonic() - t0
    if plexus.is_initialized():
        plexus.destroy_process_group()
    return error + (seconds,)


def _shm_names():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("plexus-")}
    except FileNotFoundError:
        return set()


@pytest.mark.parametrize("point,transport", CASES, ids=[f"{p}-{t}" for p, t in CASES])
def test_a_killed_rank_raises_on_every_survivor(point, transport, tmp_path):
    env = dict(POINTS[point][1], PLEXUS_TIMEOUT=str(TIMEOUT))
    if transport == TCP:
        env["PLEXUS_TRANSPORTS"] = "tcp"
    check_survivors_raise(point, transport, env, tmp_path)


def check_survivors_raise(point, transport, env, tmp_path):
    """Runs POINTS[point] on WORLD ranks with `env` (PLEXUS_TIMEOUT included); the victim dies,
    every survivor must raise naming it in time, and /dev/shm must be left clean. `transport`
    picks the fault point of the collectives without their own function (SHM: shm_round,
    anything else: send) and names the case in the printed line. Also used by test_ucx.py."""
    before = _shm_names()
    init_method = f"file://{tmp_path}/rdv"
    procs, results = start_ranks(WORLD, _case, point, transport, init_method, env=env, join_group=False)
    deadline = time.monotonic() + 4 * TIMEOUT + 30
    got = {}
    while len(got) < WORLD - 1 and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=0.5)
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting
            continue
        assert ok, f"rank {rank} failed in the harness itself:\n{value}"
        got[rank] = value
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    assert sorted(got) == [r for r in range(WORLD) if r != VICTIM], f"survivors that hung: {got}"
    assert procs[VICTIM].exitcode == -signal.SIGKILL, f"the victim was not killed (exit {procs[VICTIM].exitcode})"
    for rank, (kind, message, seconds) in got.items():
        assert kind in ("PeerError", "CollectiveTimeout"), f"rank {rank}: {kind}: {message}"
        assert "rank 1" in message, f"rank {rank} does not name the dead rank: {message}"
        assert seconds < 3 * TIMEOUT, f"rank {rank} took {seconds:.1f} s: {message}"
    left = _shm_names() - before
    assert not left, f"/dev/shm holds {sorted(left)} after the job"
    print(f"\nkill at {point} over {transport}: " +
          "; ".join(f"rank {r}: {k} after {s:.2f} s" for r, (k, _, s) in sorted(got.items())))
