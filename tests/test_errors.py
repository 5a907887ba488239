"""Errors: bad arguments fail on the spot with a clear TypeError/ValueError naming the argument
and the rank, without breaking the group; and failures between processes (a dead peer, ranks in
different calls, a peer that never comes, a rogue connection) end in a clear error, not a hang."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import socket
import struct
import time

import numpy as np
import pytest

import plexus
from launch import collect, start_ranks, run_ranks

_ctx = mp.get_context("spawn")  # the context launch.py starts ranks with

# Failures between processes are detected by the transport: run those tests over the default
# choice (shared memory within a host) and over TCP alone (what ranks on different hosts use).
TRANSPORTS = {"default": None, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}


def _outcome(call):
    """(exception type name, message) of `call`, or (None, None) when it did not raise."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the parent asserts on what came back
        return type(e).__name__, str(e)
    return None, None


def _error_info(e, since=None):
    return {
        "type": type(e).__name__,
        "plexus_error": isinstance(e, plexus.PlexusError),
        "message": str(e),
        "at": time.time(),
        "elapsed": None if since is None else time.monotonic() - since,
    }


# --- bad arguments ------------------------------------------------------------------------------

# name -> (exception type, fragments the message must contain); "{rank}" is the calling rank.
ARGUMENT_CASES = {
    "noncontiguous_slice": (ValueError, ["all_reduce", "rank {rank}", "tensor", "contiguous"]),
    "noncontiguous_transposed": (ValueError, ["all_reduce", "rank {rank}", "tensor", "contiguous"]),
    "noncontiguous_output": (ValueError, ["all_gather_into_tensor", "rank {rank}", "output_tensor", "contiguous"]),
    "dtype_int16": (TypeError, ["all_reduce", "rank {rank}", "tensor", "int16"]),
    "dtype_complex64": (TypeError, ["all_reduce", "rank {rank}", "tensor", "complex64"]),
    "dtype_big_endian": (TypeError, ["all_reduce", "rank {rank}", "tensor", "byte order"]),
    "dtype_in_tensor_list": (TypeError, ["all_gather", "rank {rank}", "tensor_list[0]", "int16"]),
    "not_an_array": (TypeError, ["all_reduce", "rank {rank}", "tensor", "list"]),
    "mixed_dtypes_gather": (TypeError, ["rank {rank}", "output_tensor", "int32", "float32"]),
    "mixed_dtypes_out": (TypeError, ["rank {rank}", "out", "float64", "float32"]),
    "all_gather_into_tensor_size": (ValueError, ["all_gather_into_tensor", "rank {rank}", "output_tensor", "9"]),
    "reduce_scatter_tensor_size": (ValueError, ["reduce_scatter_tensor", "rank {rank}", "input", "7"]),
    "all_gather_list_length": (ValueError, ["all_gather", "rank {rank}", "tensor_list", "3 entries"]),
    "all_gather_list_entry_size": (ValueError, ["all_gather", "rank {rank}", "tensor_list[1]", "5 elements"]),
    "reduce_scatter_list_length": (ValueError, ["reduce_scatter", "rank {rank}", "input_list", "1 entries"]),
    "reduce_scatter_list_entry_size": (ValueError, ["reduce_scatter", "rank {rank}", "input_list[1]", "3 elements"]),
    "all_reduce_out_size": (ValueError, ["all_reduce", "rank {rank}", "out", "5 elements"]),
    "all_reduce_out_partly_overlaps": (ValueError, ["all_reduce", "rank {rank}", "out", "overlaps"]),
    "readonly_tensor": (ValueError, ["all_reduce", "rank {rank}", "tensor", "read-only"]),
    "readonly_out": (ValueError, ["all_reduce", "rank {rank}", "out", "read-only"]),
    "readonly_gather_output": (ValueError, ["all_gather_into_tensor", "rank {rank}", "output_tensor", "read-only"]),
    "readonly_reduce_scatter_output": (ValueError, ["reduce_scatter_tensor", "rank {rank}", "output", "read-only"]),
    "readonly_broadcast_receiver": (ValueError, ["broadcast", "rank {rank}", "tensor", "read-only"]),
    "readonly_reduce_root": (ValueError, ["reduce", "rank {rank}", "tensor", "read-only"]),
    "band_on_float32": (TypeError, ["all_reduce", "rank {rank}", "band", "float32"]),
    "avg_on_int32": (TypeError, ["all_reduce", "rank {rank}", "avg", "int32"]),
    "premul_sum_on_int32": (TypeError, ["reduce_scatter", "rank {rank}", "premul_sum", "int32"]),
    "premul_sum_without_factor": (ValueError, ["all_reduce", "rank {rank}", "PREMUL_SUM", "factor"]),
    "premul_sum_infinite_factor": (ValueError, ["all_reduce", "rank {rank}", "factor", "finite"]),
    "unknown_op": (ValueError, ["all_reduce", "rank {rank}", "median"]),
    "broadcast_src_outside_group": (ValueError, ["broadcast", "rank {rank}", "rank 2", "not a member"]),
    "reduce_dst_negative": (ValueError, ["reduce", "rank {rank}", "rank -1", "not a member"]),
    "group_not_a_group": (TypeError, ["all_reduce", "group", "str"]),
}


def _argument_calls(rank, world):
    """The bad calls of ARGUMENT_CASES, for a 2-rank world."""
    assert world == 2
    other = 1 - rank

    def f32(n):
        return np.arange(n, dtype=np.float32)

    def readonly(n, dtype=np.float32):
        x = np.zeros(n, dtype=dtype)
        x.flags.writeable = False
        return x

    return {
        "noncontiguous_slice": lambda: plexus.all_reduce(f32(20)[::2]),
        "noncontiguous_transposed": lambda: plexus.all_reduce(np.zeros((4, 3), np.float32).T),
        "noncontiguous_output": lambda: plexus.all_gather_into_tensor(f32(16)[::2], f32(4)),
        "dtype_int16": lambda: plexus.all_reduce(np.zeros(4, np.int16)),
        "dtype_complex64": lambda: plexus.all_reduce(np.zeros(4, np.complex64)),
        "dtype_big_endian": lambda: plexus.all_reduce(np.zeros(4, ">f4")),
        "dtype_in_tensor_list": lambda: plexus.all_gather([np.zeros(4, np.int16) for _ in range(2)], f32(4)),
        "not_an_array": lambda: plexus.all_reduce([1.0, 2.0]),
        "mixed_dtypes_gather": lambda: plexus.all_gather_into_tensor(np.zeros(8, np.int32), f32(4)),
        "mixed_dtypes_out": lambda: plexus.all_reduce(f32(4), out=np.zeros(4, np.float64)),
        "all_gather_into_tensor_size": lambda: plexus.all_gather_into_tensor(f32(9), f32(4)),
        "reduce_scatter_tensor_size": lambda: plexus.reduce_scatter_tensor(f32(4), f32(7)),
        "all_gather_list_length": lambda: plexus.all_gather([f32(4) for _ in range(3)], f32(4)),
        "all_gather_list_entry_size": lambda: plexus.all_gather([f32(4), f32(5)], f32(4)),
        "reduce_scatter_list_length": lambda: plexus.reduce_scatter(f32(4), [f32(4)]),
        "reduce_scatter_list_entry_size": lambda: plexus.reduce_scatter(f32(4), [f32(4), f32(3)]),
        "all_reduce_out_size": lambda: plexus.all_reduce(f32(4), out=f32(5)),
        "all_reduce_out_partly_overlaps": lambda: (lambda x: plexus.all_reduce(x[:6], out=x[2:]))(f32(8)),
        "readonly_tensor": lambda: plexus.all_reduce(readonly(4)),
        "readonly_out": lambda: plexus.all_reduce(f32(4), out=readonly(4)),
        "readonly_gather_output": lambda: plexus.all_gather_into_tensor(readonly(8), f32(4)),
        "readonly_reduce_scatter_output": lambda: plexus.reduce_scatter_tensor(readonly(4), f32(8)),
        # The receiving side of a broadcast and the root of a reduce write into `tensor`.
        "readonly_broadcast_receiver": lambda: plexus.broadcast(readonly(4), src=other),
        "readonly_reduce_root": lambda: plexus.reduce(readonly(4), dst=rank),
        "band_on_float32": lambda: plexus.all_reduce(f32(4), op=plexus.ReduceOp.BAND),
        "avg_on_int32": lambda: plexus.all_reduce(np.zeros(4, np.int32), op=plexus.ReduceOp.AVG),
        "premul_sum_on_int32": lambda: plexus.reduce_scatter_tensor(
            np.zeros(4, np.int32), np.zeros(8, np.int32), op=plexus.ReduceOp.premul_sum(2.0)),
        "premul_sum_without_factor": lambda: plexus.all_reduce(f32(4), op=plexus.ReduceOp.PREMUL_SUM),
        "premul_sum_infinite_factor": lambda: plexus.all_reduce(f32(4), op=plexus.ReduceOp.premul_sum(float("inf"))),
        "unknown_op": lambda: plexus.all_reduce(f32(4), op="median"),
        "broadcast_src_outside_group": lambda: plexus.broadcast(f32(4), src=2),
        "reduce_dst_negative": lambda: plexus.reduce(f32(4), dst=-1),
        "group_not_a_group": lambda: plexus.all_reduce(f32(4), group="world"),
    }


def run_bad_calls(rank, world):
    calls = _argument_calls(rank, world)
    outcomes = {name: _outcome(call) for name, call in calls.items()}
    # Every call above failed before reaching the wire, so the group is still in step.
    x = np.full(6, rank + 1, dtype=np.float32)
    plexus.all_reduce(x)
    outcomes["_all_reduce_after"] = x.tolist()
    return outcomes


@pytest.fixture(scope="module")
def bad_call_outcomes():
    # One 2-rank world runs every bad call, so "rank 1" in a message is a real check.
    return run_ranks(2, run_bad_calls, timeout=300)


def test_argument_cases_cover_the_calls():
    assert set(_argument_calls(0, 2)) == set(ARGUMENT_CASES)


@pytest.mark.parametrize("case", sorted(ARGUMENT_CASES))
def test_bad_argument(bad_call_outcomes, case):
    exc_type, fragments = ARGUMENT_CASES[case]
    for rank, outcomes in enumerate(bad_call_outcomes):
        got_type, message = outcomes[case]
        assert got_type == exc_type.__name__, f"rank {rank}: {case} raised {got_type}: {message}"
        for fragment in fragments:
            fragment = fragment.format(rank=rank)
            assert fragment in message, f"rank {rank}: {case}: {fragment!r} not in {message!r}"


def test_group_works_after_bad_calls(bad_call_outcomes):
    for outcomes in bad_call_outcomes:
        assert outcomes["_all_reduce_after"] == [3.0] * 6


def one_rank_errs_then_all_reduce(rank, world):
    # Only rank 1 makes bad calls (in Python and in the core's checks); if any of them used up
    # a place in the op sequence, the next all_reduce would fail as a collective mismatch.
    if rank == 1:
        bad = [
            lambda: plexus.all_reduce(np.zeros(4, np.int16)),
            lambda: plexus.all_reduce(np.zeros(4, np.float32), op=plexus.ReduceOp.BAND),
            lambda: plexus.all_gather_into_tensor(np.zeros(3, np.float32), np.zeros(4, np.float32)),
            lambda: plexus.broadcast(np.zeros(4, np.float32), src=7),
        ]
        for call in bad:
            exc_type, message = _outcome(call)
            assert exc_type in ("TypeError", "ValueError"), (exc_type, message)
    results = []
    for i in range(3):
        x = np.arange(5, dtype=np.int64) + 10 * rank + i
        plexus.all_reduce(x)
        results.append(x.tolist())
    return results


def test_group_works_after_one_rank_raised():
    results = run_ranks(2, one_rank_errs_then_all_reduce, timeout=120)
    want = [(2 * np.arange(5) + 10 + 2 * i).tolist() for i in range(3)]
    assert results == [want, want]


# --- the default group's life cycle -------------------------------------------------------------


def calls_before_init(rank, world):
    x = np.zeros(4, np.float32)
    calls = {
        "all_reduce": lambda: plexus.all_reduce(x),
        "broadcast": lambda: plexus.broadcast(x, src=0),
        "barrier": lambda: plexus.barrier(),
        "get_rank": lambda: plexus.get_rank(),
        "new_group": lambda: plexus.new_group([0]),
    }
    return plexus.is_initialized(), {name: _outcome(call) for name, call in calls.items()}


def test_collective_before_init_raises():
    [(initialized, outcomes)] = run_ranks(1, calls_before_init, join_group=False, timeout=120)
    assert initialized is False
    for name, (exc_type, message) in outcomes.items():
        assert exc_type == "RuntimeError", (name, exc_type, message)
        assert name in message and "init_process_group" in message, message


def init_twice(rank, world, port):
    exc_type, message = _outcome(
        lambda: plexus.init_process_group(init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1))
    # The first group is untouched.
    x = np.ones(3, np.float32)
    plexus.all_reduce(x)
    return exc_type, message, plexus.is_initialized(), x.tolist()


def test_init_twice_raises():
    [(exc_type, message, initialized, x)] = run_ranks(1, init_twice, 1, timeout=120)
    assert exc_type == "RuntimeError", message
    assert "already initialized" in message
    assert initialized and x == [1.0, 1.0, 1.0]


# --- a rank dies in the middle of a collective --------------------------------------------------

KILL_WORLD, VICTIM = 4, 2


def all_reduce_until_error(rank, world, victim, in_loop):
    x = np.ones(8 << 20, dtype=np.float32)  # 32 MiB: each all_reduce takes a while
    plexus.all_reduce(x, op=plexus.ReduceOp.MAX)  # every connection is up from here on
    if rank == victim:
        in_loop.set()
    give_up = time.monotonic() + 300
    while time.monotonic() < give_up:
        try:
            plexus.all_reduce(x, op=plexus.ReduceOp.MAX)
        except Exception as e:  # noqa: BLE001
            return _error_info(e)
    return None


def _kill_all(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dead_rank_is_named_by_every_survivor(transport):
    in_loop = _ctx.Event()
    procs, results = start_ranks(KILL_WORLD, all_reduce_until_error, VICTIM, in_loop, env=TRANSPORTS[transport])
    try:
        assert in_loop.wait(180), "the victim never reached its all_reduce loop"
        killed_at = time.time()
        os.kill(procs[VICTIM].pid, signal.SIGKILL)
        outcomes = collect(procs, results, timeout=120, allow_failures=(VICTIM,))
    finally:
        _kill_all(procs)
    survivors = {r: info for r, info in enumerate(outcomes) if r != VICTIM}
    assert all(info is not None for info in survivors.values()), f"a survivor never saw an error: {survivors}"
    report = "\n".join(f"rank {r}: {i['type']} after {i['at'] - killed_at:.1f} s: {i['message']}"
                       for r, i in survivors.items())
    for info in survivors.values():
        assert info["plexus_error"], report
        # Every survivor must learn which rank died, not just that its neighbour hung up.
        assert re.search(rf"\brank {VICTIM}\b", info["message"]), report
        # The default timeout (600 s) is unchanged: the failure must come from the broken
        # connections, not from a deadline.
        assert info["type"] != "CollectiveTimeout", report
        assert info["at"] - killed_at < 30, report


# --- ranks in different calls -------------------------------------------------------------------

# case -> (rank 0's call, rank 1's call, fragments both messages must contain)
MISMATCHES = {
    "different_collectives": ("all_reduce/float32/10", "all_gather_into_tensor/float32/10",
                              ["all_reduce", "all_gather"]),
    "different_counts": ("all_reduce/float32/10", "all_reduce/float32/12", ["all_reduce", "count=10", "count=12"]),
    "different_dtypes": ("all_reduce/float32/10", "all_reduce/int32/10", ["all_reduce", "float32", "int32"]),
}


def mismatched_call(rank, world, case):
    kind, dtype, count = MISMATCHES[case][rank].split("/")
    x = np.ones(int(count), dtype=dtype)
    try:
        if kind == "all_reduce":
            plexus.all_reduce(x)
        else:
            plexus.all_gather_into_tensor(np.zeros(x.size * world, dtype=dtype), x)
    except Exception as e:  # noqa: BLE001
        return _error_info(e)
    return None


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_collective_mismatch_fails_on_both_ranks(case, transport):
    outcomes = run_ranks(2, mismatched_call, case, env=TRANSPORTS[transport], timeout=120)
    for rank, info in enumerate(outcomes):
        assert info is not None, f"rank {rank} completed a mismatched call"
        assert info["plexus_error"], f"rank {rank}: {info['type']}: {info['message']}"
        for fragment in MISMATCHES[case][2]:
            assert fragment in info["message"], f"rank {rank}: {fragment!r} not in {info['message']!r}"


# --- a peer that never joins the call -----------------------------------------------------------

GROUP_TIMEOUT_S = 3.0


def one_rank_never_calls(rank, world, path, ready, done):
    ready.wait(120)  # start the rendezvous together: it also has only GROUP_TIMEOUT_S
    plexus.init_process_group(init_method=f"file://{path}", rank=rank, world_size=world, timeout=GROUP_TIMEOUT_S)
    try:
        if rank == 1:
            # Stay alive, but never join: leaving would close the connection and fail rank 0
            # with a PeerError instead of the timeout this test is about.
            done.wait(120)
            return None
        start = time.monotonic()
        try:
            plexus.all_reduce(np.ones(10, np.float32))
        except Exception as e:  # noqa: BLE001
            info = _error_info(e, since=start)
        else:
            info = None
        # After a failure the group refuses further work at once.
        info_after = _outcome(lambda: plexus.all_reduce(np.ones(10, np.float32)))
        done.set()
        return info, info_after
    finally:
        plexus.destroy_process_group()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_missing_peer_times_out(tmp_path, transport):
    ready, done = _ctx.Barrier(2), _ctx.Event()
    outcomes = run_ranks(2, one_rank_never_calls, str(tmp_path / "rdv"), ready, done,
                         env=TRANSPORTS[transport], join_group=False, timeout=180)
    info, (after_type, after_message) = outcomes[0]
    assert info is not None, "all_reduce completed although rank 1 never called it"
    assert info["type"] == "CollectiveTimeout", f"{info['type']}: {info['message']}"
    assert "rank 1" in info["message"], info["message"]
    assert GROUP_TIMEOUT_S - 0.1 <= info["elapsed"] <= 15, info
    assert after_type in ("PlexusError", "PeerError", "CollectiveTimeout"), (after_type, after_message)


# --- a stranger connects to a rank's listening port ---------------------------------------------


def _rogue_connect(port, payload):
    """Sends `payload` to 127.0.0.1:port; returns what came back before the rank closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        received = b""
        try:
            while True:
                chunk = s.recv(4096)  # socket.timeout here means the rank never closed it
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset is a close too
        return received


def rogue_connections(rank, world):
    comm = plexus.distributed._state.world.comm
    port, other = comm.listen_port, 1 - rank
    rng = np.random.default_rng(1234 + rank)
    replies = {"random_bytes": _rogue_connect(port, rng.bytes(60))}
    # A well-formed hello that knows the communicator's id and claims to be the other rank (the
    # rank 1 waits for), but not the secret: taking it would hijack the peer's slot.
    hello = struct.pack("<IHHQii32s", 0x504C5848, 1, 0, comm.id, other, rank, bytes(32))
    replies["forged_hello"] = _rogue_connect(port, hello)
    results = []
    for i in range(3):
        x = np.full(1000, rank + 1 + i, dtype=np.float32)
        plexus.all_reduce(x)
        results.append(float(x[0]))
    return replies, results


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rogue_connection_is_refused_and_group_keeps_working(transport):
    outcomes = run_ranks(2, rogue_connections, env=TRANSPORTS[transport], timeout=180)
    for rank, (replies, results) in enumerate(outcomes):
        for what, reply in replies.items():
            assert reply == b"", f"rank {rank} answered a {what} connection with {reply!r}"
        assert results == [3.0, 5.0, 7.0]
