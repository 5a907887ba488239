#!/usr/bin/env python3
"""Host-side cost of one CUDA IPC collective call (plexus.device.ipc), measurable without a GPU:
the CUDA calls are replaced by tests/fake_cuda.py (host memory, no-op events), so what is timed
is the protocol itself (records, all-gathers, handle cache, Python) on N local ranks, beside a
plain host all_reduce of the same small array. On a GPU the kernels add their own time.

    python bench/ipc_host_overhead.py --np 2 --iters 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _rank(rank, world, folder, iters):
    import numpy as np

    import plexus
    from fake_cuda import FakeCuda
    from plexus.device import ipc

    fake = FakeCuda(folder, rank)
    ipc.set_driver(fake)
    x = fake.array(np.ones(16, np.float32))
    h = np.ones(16, np.float32)
    out = {}
    for name, fn in (("host all_reduce (numpy)", lambda: plexus.all_reduce(h)),
                     ("IPC all_reduce (fake driver)", lambda: plexus.all_reduce(x))):
        for _ in range(iters // 10):
            fn()
        plexus.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out[name] = (time.perf_counter() - t0) / iters * 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--iters", type=int, default=2000)
    args = p.parse_args()
    from launch import run_ranks

    with tempfile.TemporaryDirectory() as folder:
        res = run_ranks(args.np, _rank, folder, args.iters)
    for name in res[0]:
        print(f"{name:32} {max(r[name] for r in res):8.1f} us per call (slowest of {args.np} ranks)")


if __name__ == "__main__":
    main()
