"""Several "hosts" on one machine: network namespaces joined by veth pairs to a bridge, each
with one or two ranks, so that per-peer transports (shared memory within a namespace, TCP
across), hierarchical algorithms and the tuner's multi-host choices run for real. Traffic
control on the links (tbf rate limits; delay by netem where the kernel has it, else by
tests/delay_router.py, a userspace router over TUN interfaces) shows the tuner following the
network. The same beds carry the ucx transport across namespaces (UCX over TCP, where the libucx
wheel is installed). Needs root and iproute2; skipped with the reason otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys

import pytest
from netns_bed import Bed, sh

HERE = os.path.dirname(os.path.abspath(__file__))


def _why_not() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "iproute2 (ip, tc) is not installed"
    probe = f"plxprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "ok")


class NetnsBed(Bed):
    """`hosts` namespaces on a bridge, at 10.213.<k>.<i+1>/24, and ranks run in them."""

    def qdisc(self, spec: str) -> None:
        """Applies `tc qdisc replace ... root <spec>` to every namespace's link (its egress)."""
        for ns in self.names:
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", f"{ns}i", "root", *spec.split())

    def run(self, rank_hosts, task: str, env=None, timeout=300):
        """Runs tests/netns_worker.py TASK with rank r in namespace rank_hosts[r]."""
        world = len(rank_hosts)
        base = dict(os.environ, MASTER_ADDR=self.ip(rank_hosts[0]), MASTER_PORT=str(29000 + os.getpid() % 1000),
                    WORLD_SIZE=str(world), PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        base.update(env or {})
        procs = [subprocess.Popen(["ip", "netns", "exec", self.names[h], sys.executable, os.path.join(HERE, "netns_worker.py"), task],
                                  env=dict(base, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r, h in enumerate(rank_hosts)]
        results = []
        try:
            for r, p in enumerate(procs):
                try:
                    out, err = p.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"rank {r} did not finish within {timeout} s{self.state()}")
                assert p.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for q in procs:  # after a failure the others may wait for it: end and reap them
                if q.poll() is None:
                    q.kill()
                q.communicate()
        return results

    def state(self) -> str:
        """What a failure message should add about the bed (nothing here)."""
        return ""


def netem_available() -> bool:
    with NetnsBed(1) as bed:
        try:
            bed.qdisc("netem delay 1ms")
            return True
        except RuntimeError:
            return False


def test_two_hosts_with_two_ranks_each():
    with NetnsBed(2) as bed:
        results = bed.run([0, 0, 1, 1], "collectives")
    for r in results:
        assert all(n > 0 for n in r["checked"].values()), r
        assert r["choice_1m"] == "hierarchical"
    assert results[0]["transports"] == ["self", "shm", "tcp", "tcp"]
    assert results[3]["transports"] == ["tcp", "tcp", "shm", "self"]


def test_four_hosts_one_rank_each():
    with NetnsBed(4) as bed:
        results = bed.run([0, 1, 2, 3], "collectives")
    for r in results:
        assert all(n > 0 for n in r["checked"].values()), r
        assert r["transports"].count("tcp") == 3


UCX_WHY_NOT = "" if importlib.util.find_spec("libucx") else \
    "UCX cannot load: the libucx wheel is not installed (pip install libucx-cu12; .ci/run installs it)"
UCX_ENV = {"PLEXUS_TRANSPORTS": "shm,ucx", "UCX_TLS": "tcp,self"}


@pytest.mark.skipif(bool(UCX_WHY_NOT), reason=UCX_WHY_NOT or "ok")
def test_two_hosts_with_two_ranks_each_over_ucx():
    """Shared memory within each namespace, UCX (over its TCP) across: the hierarchical
    algorithms' network half runs on ucx."""
    with NetnsBed(2) as bed:
        results = bed.run([0, 0, 1, 1], "collectives", env=UCX_ENV)
    for r in results:
        assert all(n > 0 for n in r["checked"].values()), r
        assert r["choice_1m"] == "hierarchical", r
    assert results[0]["transports"] == ["self", "shm", "ucx", "ucx"]
    assert results[1]["transports"] == ["shm", "self", "ucx", "ucx"]
    assert results[3]["transports"] == ["ucx", "ucx", "shm", "self"]


@pytest.mark.skipif(bool(UCX_WHY_NOT), reason=UCX_WHY_NOT or "ok")
def test_two_hosts_one_rank_each_over_ucx():
    with NetnsBed(2) as bed:
        results = bed.run([0, 1], "collectives", env=UCX_ENV)
    for r in results:
        assert all(n > 0 for n in r["checked"].values()), r
    assert [r["transports"] for r in results] == [["self", "ucx"], ["ucx", "self"]]


def calibrated(bed, rank_hosts, tmp_path, name):
    out = str(tmp_path / name)
    bed.run(rank_hosts, "calibrate", env={"NETNS_OUT": out, "PLEXUS_CALIBRATE_BYTES": str(1 << 20)})
    return out


def timed(bed, rank_hosts, nbytes, env):
    results = bed.run(rank_hosts, "time_allreduce", env=dict(env, NETNS_BYTES=str(nbytes)))
    return max(r["seconds"] for r in results), results[0]["chosen"]


def test_rate_limit_moves_the_tuner_from_tree_to_ring(tmp_path):
    """Three hosts: a 4 KiB all-reduce takes the tree on a fast link; once the links are
    rate-limited and the tuner is recalibrated, bandwidth dominates and it takes the ring. (At
    16 KiB the fast-link choice sat on the crossover: calibrated latencies of 7-15 us put it
    on either side, and it flipped between runs.)"""
    hosts = [0, 1, 2]
    nbytes = 4 << 10
    with NetnsBed(3) as bed:
        fast = calibrated(bed, hosts, tmp_path, "fast.txt")
        fast_time, fast_choice = timed(bed, hosts, nbytes, {"PLEXUS_TUNER_FILE": fast})
        bed.qdisc("tbf rate 50mbit burst 64kbit latency 400ms")
        slow = calibrated(bed, hosts, tmp_path, "slow.txt")
        slow_time, slow_choice = timed(bed, hosts, nbytes, {"PLEXUS_TUNER_FILE": slow, "NETNS_ITERS": "5"})
        ring_time, _ = timed(bed, hosts, nbytes, {"PLEXUS_ALGO": "allreduce:@ring", "NETNS_ITERS": "5"})
        tree_time, _ = timed(bed, hosts, nbytes, {"PLEXUS_ALGO": "allreduce:@tree", "NETNS_ITERS": "5"})
    print(f"\n{nbytes >> 10} KiB all-reduce, 3 hosts: fast links -> {fast_choice} ({fast_time * 1e3:.2f} ms); "
          f"50 Mbit/s links -> {slow_choice} ({slow_time * 1e3:.2f} ms); forced ring {ring_time * 1e3:.2f} ms, "
          f"forced tree {tree_time * 1e3:.2f} ms")
    assert fast_choice == "tree"
    assert slow_choice == "ring"
    # Whether the forced ring beats the forced tree is printed, not asserted: over these links
    # the two are within a few percent and a loaded machine flips them; speed is the benches'
    # business, not a test's.


class DelayedBed(NetnsBed):
    """`hosts` namespaces joined through tests/delay_router.py: TUN interfaces and a userspace
    router that holds every packet `delay_ms` (one way). For kernels without netem."""

    def __init__(self, hosts: int, delay_ms: float):
        super().__init__(hosts)
        self.net = f"10.214.{os.getpid() % 250}"
        self.delay_ms = delay_ms
        self.router = None

    def __enter__(self):
        try:
            for ns in self.names:
                sh("ip", "netns", "add", ns)
            self.router = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "delay_router.py"), str(self.delay_ms), self.net, *self.names],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([self.router.stdout], [], [], 60)
            line = self.router.stdout.readline().strip() if ready else ""
            if line != "ready":
                self.router.kill()
                raise RuntimeError(f"delay router did not start: {self.router.communicate()[1][-2000:]}")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.router is not None:
            self.router.kill()
            self.router.communicate()
        super().__exit__()

    def state(self) -> str:
        if self.router is not None and self.router.poll() is not None:
            return f" (the delay router had exited with {self.router.returncode})"
        return ""


def delayed_bed(hosts: int, delay_ms: float):
    """netem on veth links where the kernel has it, else the userspace delay router."""
    if netem_available():
        bed = NetnsBed(hosts)
        bed.how = "tc netem"
        bed.__enter__()
        try:
            bed.qdisc(f"netem delay {delay_ms}ms")
        except Exception:
            bed.__exit__()
            raise
        return bed
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("this kernel has neither netem (sch_netem) nor TUN devices to add delay with")
    bed = DelayedBed(hosts, delay_ms)
    bed.how = "userspace delay router (no sch_netem in this kernel)"
    return bed.__enter__()


def test_added_delay_small_all_reduce_beats_ring(tmp_path):
    """Four hosts 10 ms apart: the tuner, recalibrated on these links, picks a log-depth
    algorithm for a 4 KiB all-reduce, and it is faster than the ring (2(N-1) latencies)."""
    hosts = [0, 1, 2, 3]
    bed = delayed_bed(4, 10)
    try:
        tuned = calibrated(bed, hosts, tmp_path, "delayed.txt")
        env = {"PLEXUS_TUNER_FILE": tuned, "NETNS_ITERS": "5"}
        chosen_time, chosen = timed(bed, hosts, 4096, env)
        ring_time, _ = timed(bed, hosts, 4096, dict(env, PLEXUS_ALGO="allreduce:@ring"))
    finally:
        bed.__exit__()
    print(f"\n4 KiB all-reduce, 4 hosts, 10 ms one-way delay ({bed.how}): tuner's {chosen} "
          f"{chosen_time * 1e3:.1f} ms, ring {ring_time * 1e3:.1f} ms")
    assert chosen != "ring"
    assert chosen_time < 0.9 * ring_time
