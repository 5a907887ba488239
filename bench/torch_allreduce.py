"""dist.all_reduce through torch.distributed: backend "plexus" vs "gloo", same processes.

    python bench/torch_allreduce.py                      # starts 2 local ranks itself
    python bench/torch_allreduce.py --out bench/results/torch_allreduce-np2.txt
    python -m torch.distributed.run --nproc-per-node 2 bench/torch_allreduce.py

Every rank joins the default group with backend "plexus" and a gloo group of the same ranks
(dist.new_group(backend="gloo")), then times the same dist.all_reduce(float32 tensor, SUM) on
each, alternating backends per round. Times are medians over iterations of the slowest rank;
busbw = algbw x 2(n-1)/n as in nccl-tests. Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMG" else s) * mult)


def human(n: int) -> str:
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def time_all_reduce(dist, torch, t, group, iters, warmup):
    for _ in range(warmup):
        dist.all_reduce(t, group=group)
    samples = []
    for _ in range(iters):
        dist.barrier(group=group)
        t0 = time.perf_counter()
        dist.all_reduce(t, group=group)
        samples.append(time.perf_counter() - t0)
    return samples


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("plexus")
    rank, world = dist.get_rank(), dist.get_world_size()
    gloo = dist.new_group(backend="gloo")
    groups = {"plexus": None, "gloo": gloo}
    rows = []
    for size in args.sizes:
        count = size // 4
        iters = args.iters if size <= (4 << 20) else args.iters_large
        per = {name: [] for name in groups}
        t = torch.ones(count, dtype=torch.float32)
        for rnd in range(args.rounds):  # alternate the backends so drifts hit both alike
            for name, g in groups.items():
                per[name] += time_all_reduce(dist, torch, t, g, iters, args.warmup if rnd == 0 else 1)
        # correctness of the last result: ones summed over `world` ranks, many times over
        check = torch.full((4,), float(rank + 1))
        dist.all_reduce(check)
        assert check.tolist() == [world * (world + 1) / 2] * 4
        for name in groups:
            med = torch.tensor([statistics.median(per[name])], dtype=torch.float64)
            dist.all_reduce(med, op=dist.ReduceOp.MAX, group=gloo)  # slowest rank
            rows.append((name, size, med.item(), len(per[name]), algorithm(name, size)))
    if rank == 0:
        text = table(rows, world, args)
        print(text, end="", flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text)
    dist.destroy_process_group()


def algorithm(backend: str, size: int) -> str:
    """The plexus core's choice for this size (its tuner), or '-'."""
    if backend != "plexus":
        return "-"
    import torch.distributed as dist

    try:
        return str(dist.group.WORLD.comm.explain("all_reduce", float(size))[0])
    except Exception:  # noqa: BLE001 - an older core without explain()
        return "?"


def table(rows, world, args) -> str:
    import torch

    import plexus

    factor = 2 * (world - 1) / world if world > 1 else 1.0
    lines = [
        f"# dist.all_reduce (float32, SUM) through torch.distributed: backend plexus vs gloo, {world} ranks",
        f"# machine: {platform.node()}; {os.cpu_count()} cpus; {platform.platform()}; python {platform.python_version()}",
        f"# torch {torch.__version__}, plexus {plexus.__version__}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}",
        f"# time: median per call of the slowest rank, over {args.rounds} rounds (backends alternate); "
        "busbw = algbw x 2(n-1)/n",
        "#",
        f"# {'size':>8}  {'backend':>7}  {'iters':>5}  {'time (us)':>10}  {'algbw GB/s':>10}  {'busbw GB/s':>10}  "
        f"{'vs gloo':>7}  algorithm",
    ]
    gloo_time = {size: t for name, size, t, _, _ in rows if name == "gloo"}
    for name, size, t, n, algo in rows:
        algbw = size / t / 1e9
        ratio = gloo_time[size] / t
        lines.append(f"  {human(size):>8}  {name:>7}  {n:>5}  {t * 1e6:>10.1f}  {algbw:>10.3f}  {algbw * factor:>10.3f}  "
                     f"{ratio:>6.2f}x  {algo}")
    lines.append("# vs gloo: gloo's time / this time (> 1: faster than gloo)")
    return "\n".join(lines) + "\n"


def spawn(args, argv) -> int:
    """Starts `args.nproc` local ranks of this script (env://) and waits for them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(args.nproc):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(args.nproc), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PLEXUS_BENCH_CHILD="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv, env=env))
    return max(p.wait() for p in procs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-np", "--nproc", type=int, default=2, help="ranks to start when not under a launcher")
    p.add_argument("--sizes", default="1M,64M", help="bytes per rank, comma-separated (K, M, G suffixes)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per round up to 4 MiB")
    p.add_argument("--iters-large", type=int, default=5, help="timed calls per round above 4 MiB")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="also write the table here (rank 0)")
    argv = sys.argv[1:]
    args = p.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    if "RANK" in os.environ or os.environ.get("PLEXUS_BENCH_CHILD"):
        worker(args)
        return 0
    return spawn(args, argv)


if __name__ == "__main__":
    sys.exit(main())
