"""async_op=True: the call returns a Work at once and the op runs in the background.

No test relies on timing: rank 1 holds back its side of each op until rank 0 sets `go` (a
multiprocessing Event), so rank 0 knows for certain that its op cannot have completed yet.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import threading

import numpy as np
import pytest

import plexus
from launch import run_ranks

_ctx = mp.get_context("spawn")  # the context launch.py starts ranks with
# The default transports (shared memory within a host) and TCP alone wait differently.
TRANSPORTS = {"default": None, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}
WAIT_S = 120  # how long rank 1 waits for `go` before giving up


def _inputs(rank, n=1000):
    return np.arange(n, dtype=np.float32) + 1000 * rank


def _sum_of_inputs(n=1000):
    return _inputs(0, n) + _inputs(1, n)


def overlap(rank, world, go):
    x = _inputs(rank)
    if rank == 1:
        assert go.wait(WAIT_S), "rank 0 never let rank 1 in"
        assert plexus.all_reduce(x) is None  # the synchronous form returns nothing
        return np.array_equal(x, _sum_of_inputs())
    w = plexus.all_reduce(x, async_op=True)
    seen = {
        "is_work": isinstance(w, plexus.Work),
        # Rank 1 has not called all_reduce yet: the op cannot be done.
        "completed_before": w.is_completed(),
        "success_before": w.is_success(),
        "exception_before": w.exception(),
    }
    # Work of our own while the op waits in the background.
    seen["numpy_work"] = float(np.sqrt(np.arange(1_000_000, dtype=np.float64)).sum())
    go.set()
    seen["wait"] = w.wait()
    seen["completed_after"] = w.is_completed()
    seen["success_after"] = w.is_success()
    seen["exception_after"] = w.exception()
    result = w.result()
    seen["result_is_the_tensor"] = len(result) == 1 and result[0] is x
    seen["correct"] = np.array_equal(x, _sum_of_inputs())
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_op_returns_at_once_and_overlaps(transport):
    seen, rank1_correct = run_ranks(2, overlap, _ctx.Event(), env=TRANSPORTS[transport], timeout=300)
    assert rank1_correct
    assert seen["is_work"]
    assert seen["completed_before"] is False and seen["success_before"] is False
    assert seen["exception_before"] is None
    assert seen["numpy_work"] > 0
    assert seen["wait"] is True
    assert seen["completed_after"] is True and seen["success_after"] is True
    assert seen["exception_after"] is None
    assert seen["result_is_the_tensor"] and seen["correct"]


SPINS = 100_000  # increments the helper thread makes while the main thread is in wait()


def gil_released_in_wait(rank, world, go):
    x = _inputs(rank)
    if rank == 1:
        signalled = go.wait(WAIT_S)  # on a timeout, join anyway so that nothing hangs
        plexus.all_reduce(x)
        return signalled
    w = plexus.all_reduce(x, async_op=True)
    state = {"count": 0, "armed_at": None}
    stop = threading.Event()

    def spin():
        # Lets rank 1 in only after SPINS increments past the moment the main thread entered
        # wait(): if wait() held the GIL, this thread could not run and rank 1 would time out.
        released = False
        while not stop.is_set():
            state["count"] += 1
            armed_at = state["armed_at"]
            if not released and armed_at is not None and state["count"] - armed_at >= SPINS:
                go.set()
                released = True

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    state["armed_at"] = before = state["count"]
    w.wait()
    after = state["count"]
    stop.set()
    t.join(30)
    return {"before": before, "after": after, "correct": np.array_equal(x, _sum_of_inputs())}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wait_releases_the_gil(transport):
    seen, signalled = run_ranks(2, gil_released_in_wait, _ctx.Event(), env=TRANSPORTS[transport], timeout=300)
    assert signalled, "the helper thread never ran while the main thread was blocked in wait()"
    assert seen["after"] - seen["before"] >= SPINS, seen
    assert seen["correct"]


def wait_with_timeout(rank, world, go):
    x = _inputs(rank)
    if rank == 1:
        assert go.wait(WAIT_S)
        plexus.all_reduce(x)
        return None
    w = plexus.all_reduce(x, async_op=True)
    seen = {"timeouts": []}
    for timeout in (0.2, datetime.timedelta(milliseconds=200)):
        try:
            w.wait(timeout=timeout)
        except TimeoutError as e:
            seen["timeouts"].append(str(e))
    # The timed-out waits did not cancel anything: the op completes once rank 1 joins.
    seen["completed_before"] = w.is_completed()
    go.set()
    seen["wait"] = w.wait(timeout=WAIT_S)
    seen["correct"] = np.array_equal(x, _sum_of_inputs())
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wait_timeout_raises_and_op_still_completes(transport):
    seen, _ = run_ranks(2, wait_with_timeout, _ctx.Event(), env=TRANSPORTS[transport], timeout=300)
    assert len(seen["timeouts"]) == 2, seen
    assert all("all_reduce" in m for m in seen["timeouts"]), seen
    assert seen["completed_before"] is False
    assert seen["wait"] is True and seen["correct"]


def failing_op(rank, world, go):
    if rank == 1:
        assert go.wait(WAIT_S)
        try:
            plexus.all_reduce(np.ones(12, np.float32))  # rank 0 reduces 10 elements
        except plexus.PlexusError:
            return "raised"
        return "completed"
    w = plexus.all_reduce(np.ones(10, np.float32), async_op=True)
    seen = {"exception_while_running": w.exception()}
    go.set()
    try:
        w.wait()
        seen["raised"] = None
    except Exception as e:  # noqa: BLE001
        seen["raised"] = (type(e).__name__, str(e))
    e = w.exception()
    seen["exception"] = None if e is None else (type(e).__name__, isinstance(e, plexus.PlexusError), str(e))
    seen["completed"] = w.is_completed()
    seen["success"] = w.is_success()
    try:
        w.result()
        seen["result_raised"] = False
    except plexus.PlexusError:
        seen["result_raised"] = True
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exception_of_failed_op(transport):
    seen, rank1 = run_ranks(2, failing_op, _ctx.Event(), env=TRANSPORTS[transport], timeout=300)
    assert rank1 == "raised"
    assert seen["exception_while_running"] is None
    assert seen["raised"] is not None, "wait() returned normally on a failed op"
    exc_type, is_plexus_error, message = seen["exception"]
    assert is_plexus_error and (exc_type, message) == seen["raised"]
    assert "count=10" in message and "count=12" in message
    assert seen["completed"] is True and seen["success"] is False
    assert seen["result_raised"] is True


def _queued_ops(rank, world):
    """Posts a mix of ops, all async; returns (works, check) where check() verifies results."""
    a = _inputs(rank, 5000)
    b = np.full(300, rank, dtype=np.int32)  # broadcast from rank 1
    gather_in = np.full(7, rank + 1, dtype=np.float64)
    gather_out = [np.zeros(7, np.float64) for _ in range(world)]
    rs_in = np.arange(8, dtype=np.int64) * (rank + 1)
    rs_out = np.zeros(4, np.int64)
    m = np.array([rank, -rank, 5], dtype=np.int8)
    works = [
        plexus.all_reduce(a, async_op=True),
        plexus.broadcast(b, src=1, async_op=True),
        plexus.all_gather(gather_out, gather_in, async_op=True),
        plexus.reduce_scatter_tensor(rs_out, rs_in, async_op=True),
        plexus.all_reduce(m, op=plexus.ReduceOp.MAX, async_op=True),
        plexus.barrier(async_op=True),
    ]

    def check():
        want_rs = (np.arange(8, dtype=np.int64) * 3)[rank * 4:(rank + 1) * 4]
        return {
            "all_reduce": np.array_equal(a, _sum_of_inputs(5000)),
            "broadcast": np.array_equal(b, np.full(300, 1, np.int32)),
            "all_gather": all(np.array_equal(gather_out[r], np.full(7, r + 1.0)) for r in range(world)),
            "all_gather_result": all(x is y for x, y in zip(works[2].result(), gather_out)),
            "reduce_scatter": np.array_equal(rs_out, want_rs),
            "max": m.tolist() == [1, 0, 5],
            "barrier_result": works[5].result() == [],
        }

    return works, check


def queued_back_to_back(rank, world, go):
    if rank == 1:
        assert go.wait(WAIT_S)
    works, check = _queued_ops(rank, world)
    seen = {}
    if rank == 0:
        # Nothing can have run: rank 1 has posted nothing yet.
        seen["completed_before"] = [w.is_completed() for w in works]
        go.set()
    # Ops run in the order they were posted: once one is done, every earlier one is too.
    works[2].wait()
    seen["after_third"] = [w.is_completed() for w in works[:3]]
    works[-1].wait()
    seen["after_last"] = [w.is_completed() for w in works]
    seen["success"] = [w.is_success() for w in works]
    seen.update(check())
    return seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_queued_async_ops_complete_in_order(transport):
    results = run_ranks(2, queued_back_to_back, _ctx.Event(), env=TRANSPORTS[transport], timeout=300)
    for rank, seen in enumerate(results):
        if rank == 0:
            assert seen["completed_before"] == [False] * 6
        assert seen["after_third"] == [True] * 3, seen
        assert seen["after_last"] == [True] * 6, seen
        assert seen["success"] == [True] * 6, seen
        for key, ok in seen.items():
            if key not in ("completed_before", "after_third", "after_last", "success"):
                assert ok is True, f"rank {rank}: {key}"
