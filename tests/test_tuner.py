"""The tuner: PLEXUS_ALGO parsing and validation, the cost model's choices on described
machines (small messages take a log-depth algorithm, large ones a bandwidth-optimal one),
calibration settings, `plexus info`, and `plexus.explain` on a live group."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import plexus
from launch import run_ranks
from plexus import _C, tuning
from plexus.topology import Topology

# How the algorithms scale: steps in log2(N) (or constant), and bytes per rank within a small
# factor of the optimum 2(N-1)/N (all-reduce).
LOG_DEPTH = {"tree", "rhd", "hierarchical", "shm_oneshot", "shm_twoshot", "binomial", "shm_direct"}
BANDWIDTH_OPTIMAL = {"ring", "rhd", "hierarchical", "shm_twoshot", "chain", "shm_direct"}


def choice(topo, nbytes, collective="all_reduce"):
    return tuning.predict(collective, nbytes, topo).chosen


@pytest.mark.parametrize("machine", ["2host-4gpu-nvlink-400g", "dgx-h100-2node", "cluster-16x8-400g"])
def test_small_all_reduce_is_log_depth_and_large_is_bandwidth_optimal(machine):
    topo = Topology.load(machine)
    assert choice(topo, 8) in LOG_DEPTH
    assert choice(topo, 4096) in LOG_DEPTH
    assert choice(topo, 1 << 30) in BANDWIDTH_OPTIMAL


def flat(hosts):
    """`hosts` hosts with one rank each and a 100 Gb/s NIC."""
    host = {"hostname": "h", "ranks": [0], "nics": [{"name": "eth0", "state": "up", "speed_mbps": 100000}]}
    data = {"version": 1, "hosts": [dict(host, hostname=f"h{i}", ranks=[i]) for i in range(hosts)]}
    return Topology.from_dict(data)


def test_flat_network_small_messages_avoid_the_ring():
    topo = flat(16)
    assert choice(topo, 8) != "ring"
    assert choice(topo, 8, "broadcast") == "binomial"
    assert choice(topo, 1 << 30, "broadcast") == "chain"


def test_a_slower_network_moves_the_switch_point():
    # Three hosts: a tree wins small messages (fewer steps), a ring large ones (fewer bytes).
    topo = flat(3)
    fast = tuning.cost_model_of(topo)
    slow = {k: dict(v) for k, v in fast.items()}
    slow["network"]["gbps"] = fast["network"]["gbps"] / 1000
    size = 64 << 10
    assert tuning.predict("all_reduce", size, topo, fast).chosen == "tree"
    assert tuning.predict("all_reduce", size, topo, slow).chosen == "ring"


def test_one_host_uses_shared_memory_algorithms():
    host = Topology.local().hosts[0]
    topo = Topology.from_hosts([host] * 4)
    assert choice(topo, 8) == "shm_oneshot"
    assert choice(topo, 64 << 20) == "shm_twoshot"
    assert choice(topo, 1 << 20, "all_gather") == "shm_direct"


def test_hosts_joined_by_ucx_are_costed_with_the_ucx_link():
    shape = {"ranks": 4, "hosts": 4, "local": 1, "shm": False}
    model = _C.default_cost_model()
    slow_ucx = {k: dict(v) for k, v in model.items()}
    slow_ucx["ucx"]["gbps"] = model["ucx"]["gbps"] / 100

    def ring(sh, m):
        return {name: t for name, t, _ in _C.predict("all_reduce", 1 << 20, sh, m)}["ring"]

    assert ring(dict(shape, ucx=True), slow_ucx) > 10 * ring(dict(shape, ucx=True), model)
    assert ring(shape, slow_ucx) == ring(shape, model)  # hosts joined by TCP: the ucx link plays no part
    assert model["ucx"]["alpha_us"] < model["network"]["alpha_us"]


def test_cost_model_settings_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "tuner.txt"
    path.write_text("# measured\nnet_alpha_us = 12.5\nnet_gbps = 3\nucx_alpha_us = 2.5\nucx_gbps = 20\n")
    monkeypatch.setenv("PLEXUS_TUNER_FILE", str(path))
    monkeypatch.setenv("PLEXUS_TUNER", "shm_gbps=7.5")
    model = _C.default_cost_model()
    assert model["network"] == pytest.approx({"alpha_us": 12.5, "gbps": 3.0})
    assert model["ucx"] == pytest.approx({"alpha_us": 2.5, "gbps": 20.0})
    assert model["shm"]["gbps"] == pytest.approx(7.5)
    monkeypatch.setenv("PLEXUS_TUNER", "warp_speed=9")
    with pytest.raises(ValueError, match="unknown setting 'warp_speed'"):
        _C.default_cost_model()


def bad_algo(rank, world, spec):
    try:
        plexus.all_reduce(np.ones(4, dtype=np.float32))
    except ValueError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("spec, message", [
    ("allreduce:@warp", "unknown all_reduce algorithm 'warp'; known: ring"),
    ("allreduce:0-64Q:@ring", "'64Q' is not a size"),
    ("teleport:@ring", "unknown collective 'teleport'"),
    ("allreduce:ring", "should look like collective[:lo-hi]:@algorithm"),
])
def test_plexus_algo_errors_name_the_problem(spec, message):
    for msg in run_ranks(1, bad_algo, spec, env={"PLEXUS_ALGO": spec}):
        assert message in msg, msg


def explain_ranges(rank, world):
    return [(n, plexus.explain("all_reduce", n).chosen) for n in (100, 10000, 1 << 20)]


def test_plexus_algo_ranges_choose_per_size():
    env = {"PLEXUS_ALGO": "allreduce:0-4K:@rhd#allreduce:4K-inf:@ring", "PLEXUS_TRANSPORTS": "tcp"}
    assert run_ranks(2, explain_ranges, env=env)[0] == [(100, "rhd"), (10000, "ring"), (1 << 20, "ring")]


def explain_live(rank, world):
    e = plexus.explain("all_reduce", 1 << 20)
    names = [name for name, _, runnable in e.predictions if runnable]
    return e.chosen, e.why, names, str(e)


def test_explain_on_pretend_hosts_picks_hierarchical():
    chosen, why, runnable, text = run_ranks(4, explain_live, env={"PLEXUS_HOST_ID_BY_RANK": "a,a,b,b"})[0]
    assert chosen == "hierarchical" and why == "lowest predicted time"
    assert "shm_twoshot" not in runnable and "ring" in runnable
    assert "cannot run on this group" in text


def test_plexus_info_on_a_described_machine():
    out = subprocess.run([sys.executable, "-m", "plexus.cli", "info", "--topo", "2host-4gpu-nvlink-400g"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 host(s), 8 rank(s)" in out.stdout
    for coll in tuning.COLLECTIVES:
        assert f"{coll}:" in out.stdout
    assert "hierarchical" in out.stdout and "NV6" in out.stdout
    assert "cross-memory attach (process_vm_readv between a host's ranks): not known" in out.stdout
    # This process's device-array path: without a GPU here, staging, and why.
    line = next(x for x in out.stdout.splitlines() if x.startswith("device arrays: "))
    from plexus.device import ipc

    problem = ipc.local_problem()
    assert ("native kernels within a host" in line) if problem is None else (f"no CUDA IPC: {problem}" in line), line


def test_plexus_info_says_what_cross_memory_attach_this_host_allows():
    from plexus import _cma

    def info(**env):
        out = subprocess.run([sys.executable, "-m", "plexus.cli", "info", "--ranks", "2", "--collective", "all_reduce"],
                             capture_output=True, text=True, timeout=120, env=dict(os.environ, **env))
        assert out.returncode == 0, out.stderr
        return out.stdout

    off = info(PLEXUS_CMA="0")
    assert "cross-memory attach (process_vm_readv between a host's ranks): off (PLEXUS_CMA=0)" in off
    assert "shm_cma" not in off
    assert _cma.status()[1] in info()
    # Runnable only where the host allows it; never chosen where the kernel copies as slowly
    # as measured here (the staging two-shot wins at every size).
    topo = Topology.from_hosts([Topology.local().hosts[0]] * 2)
    for cma in (False, True):
        e = tuning.predict("all_reduce", 64 << 20, topo, cma=cma)
        assert dict((n, ok) for n, _, ok in e.predictions)["shm_cma"] == cma
        assert e.chosen == "shm_twoshot"


def test_plexus_info_rejects_a_missing_file():
    out = subprocess.run([sys.executable, "-m", "plexus.cli", "info", "--topo", "/nonexistent.json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "plexus: error" in out.stderr
