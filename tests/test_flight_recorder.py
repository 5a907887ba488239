"""The flight recorder: every communicator keeps its last calls; a timeout or a peer error writes
them (every communicator of the process) as JSON into PLEXUS_TRACE_DIR, so do SIGUSR1 with
PLEXUS_TRACE_SIGNAL=1 and plexus.debug_dump(); `plexus trace DIR` reads every rank's dump and
says which rank is behind and which calls the ranks disagree on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import plexus
from launch import run_ranks


def _stall_then_disagree(rank, world, folder):
    x = np.ones(100, np.float32)
    for _ in range(5):
        plexus.all_reduce(x)  # calls #1-#5 everywhere
    if rank == 2:
        time.sleep(6)  # never makes call #6 in time: ranks 0 and 1 time out and dump
        plexus.debug_dump(os.path.join(folder, "rank2.json"))
        return "slept"
    try:
        plexus.all_reduce(x)
    except (plexus.CollectiveTimeout, plexus.PeerError):  # the rank that times out second may
        pass  # hear of the first one's timeout first; either way it dumps
    return sorted(os.listdir(folder))


def test_a_timeout_dumps_and_the_report_names_who_is_behind(tmp_path):
    env = {"PLEXUS_TIMEOUT": "3", "PLEXUS_TRACE_DIR": str(tmp_path), "PLEXUS_TRANSPORTS": "tcp"}
    run_ranks(3, _stall_then_disagree, str(tmp_path), env=env, timeout=120)
    dumps = sorted(os.listdir(tmp_path))
    assert len(dumps) == 3, dumps  # ranks 0 and 1 on their timeout, rank 2 by hand
    doc = json.loads((tmp_path / "rank2.json").read_text())
    world = next(c for c in doc["communicators"] if c["size"] == 3)
    assert [e["seq"] for e in world["entries"]] == [1, 2, 3, 4, 5]
    assert all(e["state"] == "done" and e["algorithm"] for e in world["entries"])
    out = subprocess.run([sys.executable, "-m", "plexus.cli", "trace", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "behind: rank 2 (got to call #5; others to #6)" in out.stdout, out.stdout
    assert "#6 all_reduce(count=100, dtype=float32, op=sum) failed" in out.stdout, out.stdout


def _disagree(rank, world, folder):
    x = np.ones(10, np.float32)
    plexus.all_reduce(x)
    try:
        if rank == 2:
            plexus.broadcast(x, src=0)
        else:
            plexus.all_reduce(x)
    except plexus.PlexusError:
        pass
    return plexus.debug_dump(os.path.join(folder, f"r{rank}.json"))


def test_the_report_names_calls_that_disagree(tmp_path):
    run_ranks(3, _disagree, str(tmp_path), env={"PLEXUS_TIMEOUT": "10"}, timeout=120)
    out = subprocess.run([sys.executable, "-m", "plexus.cli", "trace", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert "disagree at #2: rank 0, rank 1 called all_reduce(count=10, dtype=float32, op=sum); " \
           "rank 2 called broadcast(count=10, dtype=float32, root=0)" in out.stdout, out.stdout


def _signal_dump(rank, world, folder):
    plexus.all_reduce(np.ones(4, np.float32))
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = [n for n in os.listdir(folder) if n.startswith(f"rank{rank}-")]
        if names:
            return json.loads(open(os.path.join(folder, names[0])).read())["rank"]
        time.sleep(0.05)
    return None


def test_sigusr1_dumps_when_asked_to(tmp_path):
    env = {"PLEXUS_TRACE_SIGNAL": "1", "PLEXUS_TRACE_DIR": str(tmp_path)}
    assert run_ranks(2, _signal_dump, str(tmp_path), env=env, timeout=120) == [0, 1]


def test_an_empty_folder_says_so(tmp_path):
    from plexus import _trace

    assert _trace.report(str(tmp_path)) == [f"plexus trace: no flight-recorder dumps in {tmp_path}"]


def _ring(rank, world):
    for _ in range(5):
        plexus.all_reduce(np.ones(3, np.float32))
    doc = json.loads(plexus._C._flight_dump())
    return [[e["seq"] for e in c["entries"]] for c in doc["communicators"] if c["size"] == world]


def test_the_ring_keeps_the_last_calls():
    assert run_ranks(2, _ring, env={"PLEXUS_TRACE_BUFFER": "3"}) == [[[3, 4, 5]], [[3, 4, 5]]]
