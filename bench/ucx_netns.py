"""UCX against Plexus's own TCP between two network namespaces (one rank each, a veth pair through
a bridge: two "hosts" with no shared-memory shortcut), side by side in one run, beside
ucx_perftest on the same link. Needs root, iproute2 and UCX (the libucx wheel will do).

    sudo python bench/ucx_netns.py [--rounds 5] [--bytes 64M] [--json PATH]

Each rank holds two groups at once: one with PLEXUS_TRANSPORTS=tcp, one with ucx (UCX_TLS=tcp
unless set), and times all_reduce on them in interleaved rounds: medians and their spread.
Then the UCX group sits idle for --idle seconds while the rank's CPU time is measured."""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from netns_bed import Bed  # noqa: E402 - two namespaces on a bridge, shared with tests/test_netns.py


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    return int(m.group(1)) * units[m.group(2)]


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def worker(args) -> None:
    """One rank: times both groups in interleaved rounds, then idles on the UCX one."""
    import numpy as np

    import plexus

    os.environ["PLEXUS_TRANSPORTS"] = "tcp"
    plexus.init_process_group(init_method="env://", timeout=120)
    groups = {}
    for name in ("tcp", "ucx"):
        os.environ["PLEXUS_TRANSPORTS"] = name  # read when the group is made
        groups[name] = plexus.new_group([0, 1])
    comm = {name: g.comm.transport_to(1 - plexus.get_rank()) for name, g in groups.items()}
    big, small = np.ones(args.bytes // 4, np.float32), np.ones(2, np.float32)
    times = {(name, size): [] for name in groups for size in ("small", "big")}
    cpu_per_call = {key: [] for key in times}  # the process's CPU seconds (all threads) per call
    for g in groups.values():  # connect and warm up
        plexus.all_reduce(small, group=g)
        plexus.all_reduce(big, group=g)
    for _ in range(args.rounds):
        for name, g in groups.items():
            for size, x, iters in (("small", small, args.small_iters), ("big", big, args.big_iters)):
                plexus.barrier(group=g)
                c, t = cpu_seconds(), time.perf_counter()
                for _ in range(iters):
                    plexus.all_reduce(x, group=g)
                times[(name, size)].append((time.perf_counter() - t) / iters)
                cpu_per_call[(name, size)].append((cpu_seconds() - c) / iters)
    plexus.barrier()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    time.sleep(args.idle)  # the UCX group (and the TCP one) idle, connected
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    plexus.all_reduce(small, group=groups["ucx"])  # still works after the idle time
    plexus.barrier()
    print(json.dumps({"rank": plexus.get_rank(), "transports": comm, "idle_cpu_fraction": cpu / wall,
                      "times": {f"{n}/{s}": v for (n, s), v in times.items()},
                      "cpu": {f"{n}/{s}": v for (n, s), v in cpu_per_call.items()}}), flush=True)
    plexus.destroy_process_group()


def perftest(bed: Bed, test: str, size: int, iters: int) -> dict:
    """ucx_perftest between the namespaces (UCX_TLS=tcp): the 'Final:' line's figures."""
    from plexus import _C

    status = _C.ucx_status()
    binary = os.path.join(os.path.dirname(os.path.dirname(status["path"])), "bin", "ucx_perftest")
    if not status["ok"] or not os.path.exists(binary):
        return {"error": "ucx_perftest not found beside " + (status["path"] or "UCX")}
    lib = os.path.dirname(status["path"])
    env = dict(os.environ, UCX_TLS=os.environ.get("UCX_TLS", "tcp"),
               LD_LIBRARY_PATH=lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", ""))
    cmd = [binary, "-t", test, "-s", str(size), "-n", str(iters)]
    server = subprocess.Popen(["ip", "netns", "exec", bed.names[0], *cmd], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    client = subprocess.run(["ip", "netns", "exec", bed.names[1], *cmd, bed.ip(0)], env=env, capture_output=True,
                            text=True, timeout=120)
    server.communicate(timeout=30)
    final = [line for line in client.stdout.splitlines() if line.startswith("Final:")]
    if not final:
        return {"error": client.stdout[-500:] + client.stderr[-500:]}
    f = final[0].split()
    # Final: iterations, latency typical/avg/overall (us), bandwidth avg/overall (MB/s), msgrate avg/overall
    return {"latency_us": float(f[2]), "latency_avg_us": float(f[3]), "mb_per_s": float(f[5])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bytes", type=parse_size, default=parse_size("64M"))
    p.add_argument("--small-iters", type=int, default=200)
    p.add_argument("--big-iters", type=int, default=3)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("ucx_netns: needs root and iproute2 (ip)", file=sys.stderr)
        return 2
    os.environ.setdefault("UCX_TLS", "tcp")
    with Bed(2, prefix="plxu", subnet=214) as bed:
        env = dict(os.environ, MASTER_ADDR=bed.ip(0), MASTER_PORT=str(29500 + os.getpid() % 1000), WORLD_SIZE="2")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rounds", str(args.rounds), "--bytes",
               str(args.bytes), "--small-iters", str(args.small_iters), "--big-iters", str(args.big_iters),
               "--idle", str(args.idle)]
        procs = [subprocess.Popen(["ip", "netns", "exec", bed.names[r], *cmd], env=dict(env, RANK=str(r)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        outs = []
        for r, proc in enumerate(procs):
            out, err = proc.communicate(timeout=1200)
            if proc.returncode != 0:
                print(f"rank {r} failed:\n{err[-3000:]}", file=sys.stderr)
                return 1
            outs.append(json.loads(out.strip().splitlines()[-1]))
        perf = {"tag_lat_8B": perftest(bed, "tag_lat", 8, 20000),
                "tag_bw_64MiB": perftest(bed, "tag_bw", args.bytes, 20)}
    # The slowest rank's time per round, then medians over rounds.
    report = {"bytes": args.bytes, "rounds": args.rounds, "ucx_tls": os.environ["UCX_TLS"],
              "transports": [o["transports"] for o in outs], "idle_cpu_fraction": [o["idle_cpu_fraction"] for o in outs],
              "ucx_perftest": perf, "rows": {}}
    for key in outs[0]["times"]:
        per_round = [max(o["times"][key][i] for o in outs) for i in range(args.rounds)]
        report["rows"][key] = per_round
    report["cpu"] = {key: [o["cpu"][key] for o in outs] for key in outs[0]["cpu"]}
    n = args.bytes

    def med(key):
        return statistics.median(report["rows"][key])

    ratio_big = [t / u for t, u in zip(report["rows"]["tcp/big"], report["rows"]["ucx/big"])]
    ratio_small = [u / t for t, u in zip(report["rows"]["tcp/small"], report["rows"]["ucx/small"])]
    print(f"all_reduce between two namespaces (one rank each), UCX_TLS={report['ucx_tls']}, medians of "
          f"{args.rounds} interleaved rounds (lowest-highest):")
    for name in ("tcp", "ucx"):
        big, small = report["rows"][f"{name}/big"], report["rows"][f"{name}/small"]
        print(f"  {name}: {n >> 20} MiB {med(name + '/big') * 1e3:.1f} ms = {n / med(name + '/big') / 1e9:.3f} GB/s busbw "
              f"({min(big) * 1e3:.1f}-{max(big) * 1e3:.1f} ms); 8 B {med(name + '/small') * 1e6:.1f} us "
              f"({min(small) * 1e6:.1f}-{max(small) * 1e6:.1f})")
        cpu_big = statistics.median(c for o in outs for c in o["cpu"][f"{name}/big"])
        print(f"       CPU per {n >> 20} MiB call (a rank, all threads): median {cpu_big * 1e3:.1f} ms "
              f"= {cpu_big / med(name + '/big'):.2f} cores")
    print(f"  ucx busbw / tcp busbw at {n >> 20} MiB: {statistics.median(ratio_big):.2f} "
          f"({min(ratio_big):.2f}-{max(ratio_big):.2f}); ucx 8 B time / tcp: {statistics.median(ratio_small):.2f} "
          f"({min(ratio_small):.2f}-{max(ratio_small):.2f})")
    print(f"  ucx_perftest: {json.dumps(perf)}")
    print(f"  idle ({args.idle:g} s, both groups connected): CPU per rank "
          + ", ".join(f"{f * 100:.2f}%" for f in report["idle_cpu_fraction"]) + " of a core")
    report["ratio_busbw_median"] = statistics.median(ratio_big)
    report["ratio_latency_median"] = statistics.median(ratio_small)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
