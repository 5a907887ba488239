"""Joining a group: the env://, tcp:// and file:// init methods, their argument errors, ranks
that disagree on the world size, the rendezvous store itself, leaving and joining again, and
PLEXUS_DEBUG logging."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import plexus
from plexus import _C
from launch import run_ranks

_ctx = mp.get_context("spawn")  # the context launch.py starts ranks with


def _free_port():
    # Another process could take it before the ranks bind it; unlikely enough on a test box.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_group(rank, world):
    """What the group looks like from this rank, after one all_reduce over it."""
    x = np.full(10, rank + 1, dtype=np.int64)
    plexus.all_reduce(x)
    return {
        "initialized": plexus.is_initialized(),
        "rank": plexus.get_rank(),
        "world": plexus.get_world_size(),
        "backend": plexus.get_backend(),
        "sum": x.tolist(),
    }


def _assert_groups(results, world):
    for rank, got in enumerate(results):
        assert got == {
            "initialized": True,
            "rank": rank,
            "world": world,
            "backend": "plexus",
            "sum": [world * (world + 1) // 2] * 10,
        }, f"rank {rank}: {got}"


# --- init methods -------------------------------------------------------------------------------


def join_env(rank, world, port, explicit):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    if explicit:
        plexus.init_process_group(init_method="env://")
    else:
        plexus.init_process_group()  # env:// is the default
    try:
        return _check_group(rank, world)
    finally:
        plexus.destroy_process_group()


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "explicit"])
def test_env_init(explicit):
    results = run_ranks(3, join_env, _free_port(), explicit, join_group=False, timeout=180)
    _assert_groups(results, 3)


def join_tcp(rank, world, port):
    plexus.init_process_group(init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        return _check_group(rank, world)
    finally:
        plexus.destroy_process_group()


def test_tcp_init():
    _assert_groups(run_ranks(2, join_tcp, _free_port(), join_group=False, timeout=180), 2)


def join_file(rank, world, path):
    plexus.init_process_group(init_method=f"file://{path}", rank=rank, world_size=world)
    got = _check_group(rank, world)
    plexus.destroy_process_group()
    if rank == 0:
        got["file_left_behind"] = os.path.exists(path)  # rank 0 removes it on the way out
    return got


def test_file_init(tmp_path):
    results = run_ranks(3, join_file, str(tmp_path / "rendezvous"), join_group=False, timeout=180)
    assert results[0].pop("file_left_behind") is False
    _assert_groups(results, 3)


def already_joined(rank, world):
    return _check_group(rank, world)


def test_file_init_by_the_harness():
    # launch.py's own default: file:// in a fresh temporary path.
    _assert_groups(run_ranks(4, already_joined, timeout=180), 4)


# --- init arguments -----------------------------------------------------------------------------

ENV = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "WORLD_SIZE": "1"}


def bad_inits(rank, world, closed_port):
    env = dict(ENV, MASTER_PORT=str(closed_port))
    outcomes = {}

    def attempt(case, env_changes=None, **kwargs):
        for name in list(env) + list(env_changes or {}):
            os.environ.pop(name, None)
        os.environ.update({k: v for k, v in {**env, **(env_changes or {})}.items() if v is not None})
        kwargs.setdefault("timeout", 5)  # were a case to get as far as the store, it would fail soon
        try:
            plexus.init_process_group(**kwargs)
            outcomes[case] = (None, None)
        except Exception as e:  # noqa: BLE001
            outcomes[case] = (type(e).__name__, str(e))
        if plexus.is_initialized():
            plexus.destroy_process_group()

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        attempt(f"missing {name}", {name: None})
    attempt("RANK not a number", {"RANK": "one"})
    attempt("rank >= world_size (env)", {"RANK": "2", "WORLD_SIZE": "2"})
    attempt("rank >= world_size (args)", init_method="tcp://127.0.0.1:1", rank=2, world_size=2)
    attempt("world_size 0", init_method="tcp://127.0.0.1:1", rank=0, world_size=0)
    attempt("tcp without port", init_method="tcp://127.0.0.1", rank=0, world_size=1)
    attempt("unknown scheme", init_method="udp://127.0.0.1:1", rank=0, world_size=1)
    attempt("other backend", backend="nccl")
    attempt("timeout 0", timeout=0)
    attempt("PLEXUS_TIMEOUT not a number", {"PLEXUS_TIMEOUT": "soon"}, timeout=None)
    return outcomes


BAD_INITS = {
    "missing RANK": ["RANK"],
    "missing WORLD_SIZE": ["WORLD_SIZE"],
    "missing MASTER_ADDR": ["MASTER_ADDR"],
    "missing MASTER_PORT": ["MASTER_PORT"],
    "RANK not a number": ["RANK", "one"],
    "rank >= world_size (env)": ["rank 2", "world_size 2"],
    "rank >= world_size (args)": ["rank 2", "world_size 2"],
    "world_size 0": ["world_size", "0"],
    "tcp without port": ["tcp://127.0.0.1"],
    "unknown scheme": ["udp://"],
    "other backend": ["nccl"],
    "timeout 0": ["timeout"],
    "PLEXUS_TIMEOUT not a number": ["PLEXUS_TIMEOUT", "soon"],
}


@pytest.fixture(scope="module")
def bad_init_outcomes():
    # A bound but not listening socket: nothing can answer on its port while the test runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        [outcomes] = run_ranks(1, bad_inits, s.getsockname()[1], join_group=False, timeout=180)
    return outcomes


def test_bad_init_cases_match(bad_init_outcomes):
    assert set(bad_init_outcomes) == set(BAD_INITS)


@pytest.mark.parametrize("case", sorted(BAD_INITS))
def test_bad_init_raises_value_error(bad_init_outcomes, case):
    exc_type, message = bad_init_outcomes[case]
    assert exc_type == "ValueError", f"{case}: {exc_type}: {message}"
    for fragment in BAD_INITS[case]:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


# --- ranks that disagree on the world size ------------------------------------------------------

INIT_TIMEOUT_S = 5.0


def disagreeing_world(rank, world, path, sizes, ready):
    ready.wait(120)  # start the rendezvous together: it has only INIT_TIMEOUT_S
    start = time.monotonic()
    try:
        plexus.init_process_group(init_method=f"file://{path}", rank=rank, world_size=sizes[rank],
                                  timeout=INIT_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, isinstance(e, (ValueError, plexus.PlexusError)), str(e), time.monotonic() - start
    plexus.destroy_process_group()
    return None


@pytest.mark.parametrize("sizes", [(2, 3), (3, 2)], ids=["rank1_says_3", "rank0_says_3"])
def test_world_size_disagreement_fails_within_timeout(tmp_path, sizes):
    results = run_ranks(2, disagreeing_world, str(tmp_path / "rdv"), sizes, _ctx.Barrier(2),
                        join_group=False, timeout=180)
    for rank, result in enumerate(results):
        assert result is not None, f"rank {rank} joined a group whose ranks disagree on its size"
        exc_type, clear_type, message, elapsed = result
        assert clear_type, f"rank {rank}: {exc_type}: {message}"
        assert elapsed < INIT_TIMEOUT_S + 10, f"rank {rank} took {elapsed:.1f} s: {message}"
    # Rank 1 reads rank 0's world size in the rendezvous and names both.
    exc_type, _, message, _ = results[1]
    assert exc_type == "ValueError", message
    assert str(sizes[0]) in message and str(sizes[1]) in message, message


# --- the rendezvous store -----------------------------------------------------------------------


@pytest.fixture
def store():
    server = _C.TcpStoreServer("127.0.0.1", 0)
    client = _C.TcpStoreClient("127.0.0.1", server.port, 10.0)
    yield server, client
    del client, server


def test_store_set_get_add(store):
    server, client = store
    assert server.port > 0
    client.set("key", b"value")
    assert client.get("key") == b"value"
    client.set("key", b"\x00binary\xff")
    assert client.get("key", timeout=5) == b"\x00binary\xff"
    assert client.add("counter", 3) == 3
    assert client.add("counter", -1) == 2
    # ADD keeps the number as a little-endian int64 that GET hands back as is.
    assert struct.unpack("<q", client.get("counter")) == (2,)
    # A second client sees the same data.
    other = _C.TcpStoreClient("127.0.0.1", server.port, 10.0)
    assert other.get("key") == b"\x00binary\xff"
    assert other.add("counter", 10) == 12


def test_store_prefix(store):
    _, client = store
    prefixed = _C.PrefixStore(client, "group7/")
    prefixed.set("k", b"1")
    assert client.get("group7/k") == b"1"
    assert prefixed.get("k") == b"1"
    assert prefixed.add("n", 5) == 5


def test_store_get_of_missing_key_times_out(store):
    _, client = store
    start = time.monotonic()
    with pytest.raises(plexus.CollectiveTimeout, match="missing"):
        client.get("missing", timeout=0.5)
    assert 0.4 <= time.monotonic() - start < 15
    # The connection is still in step after a timed-out GET.
    client.set("after", b"ok")
    assert client.get("after") == b"ok"


def test_store_get_waits_for_the_key(store):
    server, client = store
    setter = _C.TcpStoreClient("127.0.0.1", server.port, 10.0)
    t = threading.Timer(0.3, lambda: setter.set("late", b"here"))
    t.start()
    try:
        assert client.get("late", timeout=60) == b"here"
    finally:
        t.join()


def test_store_client_without_server_fails():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        start = time.monotonic()
        with pytest.raises(plexus.PlexusError, match="cannot reach the rendezvous store"):
            _C.TcpStoreClient("127.0.0.1", s.getsockname()[1], 1.0)
        assert time.monotonic() - start < 15


# --- leaving and joining again ------------------------------------------------------------------


def leave_and_rejoin(rank, world, path, orphan_failed):
    first = _check_group(rank, world)
    sub = plexus.new_group([0, 1])
    y = np.ones(4, np.float32)
    plexus.all_reduce(y, group=sub)
    if rank == 0:
        # An op rank 1 never joins: destroy_process_group() must fail it, not leave it hanging.
        w = plexus.all_reduce(np.ones(4, np.float32), async_op=True)
        plexus.destroy_process_group()
        try:
            w.wait(timeout=60)
            orphan = None
        except Exception as e:  # noqa: BLE001
            orphan = (type(e).__name__, isinstance(e, plexus.PlexusError), str(e))
        orphan_failed.set()
    else:
        orphan = None
        orphan_failed.wait(120)  # keep the connection open until rank 0 is done with its orphan
        plexus.destroy_process_group()
    after_destroy = (plexus.is_initialized(), plexus.GroupMember.WORLD)
    try:
        plexus.all_reduce(np.ones(4, np.float32))
        call_after_destroy = None
    except RuntimeError as e:
        call_after_destroy = str(e)

    plexus.init_process_group(init_method=f"file://{path}", rank=rank, world_size=world)
    second = _check_group(rank, world)
    sub = plexus.new_group([0, 1])  # group names start over in the new world
    y = np.ones(4, np.float32)
    plexus.all_reduce(y, group=sub)
    return {
        "first": first,
        "second": second,
        "orphan": orphan,
        "after_destroy": after_destroy,
        "call_after_destroy": call_after_destroy,
        "subgroup_sum": y.tolist(),
    }


def test_destroy_then_init_again(tmp_path):
    results = run_ranks(2, leave_and_rejoin, str(tmp_path / "second"), _ctx.Event(), timeout=180)
    _assert_groups([r["first"] for r in results], 2)
    _assert_groups([r["second"] for r in results], 2)
    for r in results:
        assert r["after_destroy"] == (False, None)
        assert r["call_after_destroy"] is not None and "init_process_group" in r["call_after_destroy"]
        assert r["subgroup_sum"] == [2.0] * 4
    exc_type, is_plexus_error, message = results[0]["orphan"]
    assert is_plexus_error and "destroy_process_group" in message, f"{exc_type}: {message}"


# --- PLEXUS_DEBUG -------------------------------------------------------------------------------

RANK_SCRIPT = textwrap.dedent("""
    import numpy as np, plexus
    plexus.init_process_group()
    x = np.ones(8, np.float32)
    plexus.all_reduce(x)
    assert x[0] == 2
    plexus.destroy_process_group()
""")


def _run_pair(debug):
    """Runs RANK_SCRIPT as two env:// ranks; returns each one's (exit code, stderr)."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
        env.pop("PLEXUS_DEBUG", None)
        if debug:
            env["PLEXUS_DEBUG"] = debug
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            out.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_debug_info_prints_rank_prefixed_lines():
    for rank, (code, err) in enumerate(_run_pair("INFO")):
        assert code == 0, err
        # "[plexus <pid>:<rank>] INFO ..." - the line about this rank's communicator included.
        assert re.search(rf"^\[plexus \d+:{rank}\] INFO ", err, re.M), f"rank {rank} stderr:\n{err}"
        assert re.search(rf"^\[plexus \d+:{rank}\] INFO communicator [0-9a-f]+: rank {rank} of 2 ", err, re.M), \
            f"rank {rank} stderr:\n{err}"


def test_no_info_lines_by_default():
    for code, err in _run_pair(None):
        assert code == 0, err
        assert " INFO " not in err, err
