#!/usr/bin/env python3
"""Long-run load (issue 16): every rank makes many mixed calls (0 B to 16 MiB, sync and async,
two groups at once) and reports its resident memory, open descriptors and this job's /dev/shm
entries at checkpoints; after warm-up they must stay flat.

    python bench/load.py --np 4 --calls 100000 --checkpoints 10000,100000
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

SIZES = [0, 1, 7, 1000, 4096, 65536, 1 << 20, 16 << 20]  # bytes


def usage():
    """(resident MiB, open descriptors, /dev/shm entries of plexus)."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    fds = len(os.listdir("/proc/self/fd"))
    shm = sum(1 for n in os.listdir("/dev/shm") if n.startswith("plexus-")) if os.path.isdir("/dev/shm") else 0
    return rss, fds, shm


def _rank(rank, world, calls, checkpoints):
    import numpy as np

    import plexus

    evens = plexus.new_group(list(range(0, world, 2)))
    bufs = [np.ones(max(1, s // 4), np.float32)[: s // 4] for s in SIZES]
    big_every = 500  # a 16 MiB call now and then: the mix stays mostly small, as in training
    out, pending = {}, []
    for i in range(1, calls + 1):
        k = i % (len(SIZES) - 1) if i % big_every else len(SIZES) - 1
        x = bufs[k]
        if i % 7 == 0:
            pending.append(plexus.all_reduce(x, async_op=True))
        elif i % 11 == 0:
            if evens is not plexus.GroupMember.NON_GROUP_MEMBER:
                plexus.all_reduce(x, group=evens)
        elif i % 5 == 0:
            plexus.broadcast(x, src=i % world)
        else:
            plexus.all_reduce(x)
        if len(pending) >= 8:
            for w in pending:
                w.wait()
            pending.clear()
        if i % 1000 == 0:
            plexus.barrier()  # groups in step: the evens' calls line up with the world's
        if i in checkpoints:
            for w in pending:
                w.wait()
            pending.clear()
            out[i] = usage()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--calls", type=int, default=100000)
    p.add_argument("--checkpoints", default="10000,100000")
    args = p.parse_args()
    from launch import run_ranks

    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    res = run_ranks(args.np, _rank, args.calls, set(checkpoints), timeout=24 * 3600)
    first, last = checkpoints[0], checkpoints[-1]
    print(f"{args.np} ranks, {args.calls} mixed calls each (0 B - 16 MiB, sync and async, world and a sub-group)")
    for r, points in enumerate(res):
        line = "  ".join(f"@{c}: {points[c][0]:.1f} MiB, {points[c][1]} fds, {points[c][2]} shm" for c in checkpoints)
        growth = (points[last][0] - points[first][0]) / points[first][0] * 100
        print(f"  rank {r}: {line}; RSS {growth:+.2f}% from {first} to {last}")


if __name__ == "__main__":
    main()
