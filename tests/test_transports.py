"""The table of transports: what _C.transports() lists, how PLEXUS_TRANSPORTS is checked against
it, and which transport each peer gets (the first allowed one that can connect the pair). The
ucx transport's own cases are in test_ucx.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

import plexus
from plexus import _C
from launch import run_ranks


def test_table_lists_shm_ucx_tcp_with_summaries():
    rows = _C.transports()
    assert [name for name, _ in rows] == ["shm", "ucx", "tcp"], rows
    assert all(isinstance(summary, str) and summary for _, summary in rows), rows


def test_plexus_info_prints_the_table():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "plexus.cli", "info", "--ranks", "2"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("transports"))
    assert [f"{name}: {summary}" in line for name, summary in _C.transports()] == [True] * 3, line


def join_and_report(rank, world):
    """Joins a group through the test's store; returns (exception type, message), or ("ok",
    the transport to each peer)."""
    store = _C.TcpStoreClient("127.0.0.1", int(os.environ["STORE_PORT"]), 30.0)
    try:
        plexus.init_process_group(store=store, rank=rank, world_size=world, timeout=30)
    except Exception as e:  # noqa: BLE001 - the parent asserts on what came back
        return type(e).__name__, str(e)
    comm = plexus.distributed._state.world.comm
    row = [comm.transport_to(p) if p != rank else "self" for p in range(world)]
    plexus.destroy_process_group()
    return "ok", row


def join(world, env):
    """Runs join_and_report on `world` ranks. The store lives in this process, so that a rank
    failing early cannot take it away from the others (rank 0 would host it otherwise)."""
    server = _C.TcpStoreServer("127.0.0.1", 0)
    return run_ranks(world, join_and_report, env=dict(env, STORE_PORT=str(server.port)), join_group=False)


def test_unknown_transport_is_an_error_naming_the_known_ones():
    for kind, msg in join(2, {"PLEXUS_TRANSPORTS": "shm,udp"}):
        assert kind == "ValueError", (kind, msg)
        assert "PLEXUS_TRANSPORTS=shm,udp: unknown transport 'udp' (known: shm, ucx, tcp)" in msg, msg


def test_a_setting_without_names_allows_no_transport():
    for kind, msg in join(2, {"PLEXUS_TRANSPORTS": ","}):
        assert kind == "ValueError" and "PLEXUS_TRANSPORTS=, allows no transport" in msg, (kind, msg)


def test_shm_alone_across_hosts_is_an_error():
    for kind, msg in join(2, {"PLEXUS_TRANSPORTS": "shm", "PLEXUS_HOST_ID_BY_RANK": "a,b"}):
        assert kind == "ValueError", (kind, msg)
        assert "PLEXUS_TRANSPORTS=shm, but some ranks of this group are on other hosts" in msg, msg


@pytest.mark.parametrize("env, want", [
    ({}, [["self", "shm", "tcp"], ["shm", "self", "tcp"], ["tcp", "tcp", "self"]]),
    ({"PLEXUS_TRANSPORTS": "tcp"}, [["self", "tcp", "tcp"], ["tcp", "self", "tcp"], ["tcp", "tcp", "self"]]),
])
def test_each_peer_gets_the_first_transport_that_connects_the_pair(env, want):
    assert join(3, dict(env, PLEXUS_HOST_ID_BY_RANK="a,a,b")) == [("ok", row) for row in want]


def collectives_and_messages(rank, world):
    x = np.full(1000, rank + 1, dtype=np.float32)
    plexus.all_reduce(x)
    if rank == 0:
        plexus.send(np.arange(10, dtype=np.int64), dst=world - 1)
    elif rank == world - 1:
        y = np.zeros(10, dtype=np.int64)
        plexus.recv(y, src=0)
        assert y.tolist() == list(range(10))
    return float(x[0])


def test_mixed_transports_carry_collectives_and_point_to_point():
    # Ranks 0-1 share a pretend host (shm between them), rank 2 is reached over TCP.
    results = run_ranks(3, collectives_and_messages, env={"PLEXUS_HOST_ID_BY_RANK": "a,a,b"})
    assert results == [6.0, 6.0, 6.0]


@pytest.mark.parametrize("cuda,env,says", [
    (True, {}, "send/recv straight through UCX, which moves CUDA memory here (where the other rank's does too); "
               "collectives too in groups whose every pair goes so"),
    (True, {"PLEXUS_UCX_DEVICE": "0"}, "staged through pinned host memory (PLEXUS_UCX_DEVICE=0)"),
    (False, {}, "staged through pinned host memory (UCX here cannot move CUDA memory itself)"),
])
def test_plexus_info_says_how_device_arrays_cross_hosts(cuda, env, says, monkeypatch):
    from plexus import cli

    status = {"ok": True, "problem": "", "path": "/x/libucp.so.0", "version": "1.22.0", "transports": ["tcp"],
              "rdma": False, "cuda_memory": cuda}
    monkeypatch.setattr(_C, "ucx_status", lambda: status)
    monkeypatch.delenv("PLEXUS_TRANSPORTS", raising=False)
    monkeypatch.delenv("PLEXUS_UCX_DEVICE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    line = cli._pair_transports()[-1]
    assert line.startswith("device arrays across hosts: ") and says in line, line
