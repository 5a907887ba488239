#!/usr/bin/env python3
"""Host-side cost of one device all_reduce call (and of an all_to_all_single of the same 16
floats, and of an exchange with the ring neighbours: isend + irecv + both waits), beside a plain
host all_reduce of those 16 floats (and a host exchange), on N local ranks (slowest rank; median
of --rounds interleaved rounds, with the spread).

Without a GPU the CUDA calls are replaced by tests/fake_cuda.py (host memory): the CUDA IPC
path (plexus.device.ipc: records, host all-gathers, handle cache) and the native path
(plexus.device.native on the emulated device: the C++ call and the signal-pad protocol, run on
the CPU, so its time includes the handshake with the peers, as the host all_reduce's does).
With --cuda (a GPU, cupy): the native path on real device arrays, timed as the thread's CPU
time per call (what the host spends enqueueing; the GPU does the rest), and the wall time per
call of 100 calls captured in one CUDA graph (what the GPU spends, without the host).

    python bench/ipc_host_overhead.py --np 2 --iters 2000
    python bench/ipc_host_overhead.py --np 2 --cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


GRAPH_CALLS = 100
GRAPHED = f"native all_reduce, {GRAPH_CALLS} per CUDA graph (GPU wall)"


def _exchange(plexus, x, y, rank, world):
    """x to the next rank, y from the one before, both waited for (nothing with one rank)."""
    to, frm = (rank + 1) % world, (rank - 1) % world

    def call():
        if world > 1:
            sent, got = plexus.isend(x, to), plexus.irecv(y, frm)
            sent.wait()
            got.wait()
    return call


def _rank(rank, world, folder, iters, rounds, mode):
    import numpy as np

    import plexus
    from plexus.device import ipc

    h, hy = np.ones(16, np.float32), np.zeros(16, np.float32)
    calls = {"host all_reduce (numpy)": lambda: plexus.all_reduce(h),
             "host isend+irecv (numpy)": _exchange(plexus, h, hy, rank, world)}
    clock = time.perf_counter
    cuda = mode == "cuda"
    if cuda:
        import cupy as cp

        cp.cuda.Device(0).use()
        x = cp.ones(16, cp.float32)
        y = cp.zeros_like(x)
        calls["native all_reduce (cupy, CPU time)"] = lambda: plexus.all_reduce(x)
        calls["native all_reduce out= (cupy, CPU time)"] = lambda: plexus.all_reduce(x, out=y)
        calls["native all_to_all_single (cupy, CPU time)"] = lambda: plexus.all_to_all_single(y, x)
        calls["native isend+irecv (cupy, CPU time)"] = _exchange(plexus, x, y, rank, world)
        try:  # what plexus-bench and the torch backend pass
            import torch

            t = torch.ones(16, dtype=torch.float32, device="cuda:0")
            calls["native all_reduce (torch, CPU time)"] = lambda: plexus.all_reduce(t)
        except ImportError:
            pass
        plexus.all_reduce(x)  # the workspaces are set up outside the capture
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            for _ in range(GRAPH_CALLS):
                plexus.all_reduce(x)
            graph = stream.end_capture()

        def replay():  # GRAPH_CALLS calls, no host work: the GPU's own time per call
            graph.launch(stream)
            stream.synchronize()
        calls[GRAPHED] = replay
    else:  # one driver per process: a group picks its device path once
        from fake_cuda import FakeCuda

        fake = FakeCuda(folder, rank, native=mode == "native")
        ipc.set_driver(fake)
        x = fake.array(np.ones(16, np.float32))
        name = "native all_reduce (emulated device)" if mode == "native" else "IPC all_reduce (fake driver)"
        calls[name] = lambda: plexus.all_reduce(x)
        if mode == "native":
            y = fake.array(np.zeros(16, np.float32))
            calls["native all_to_all_single (emulated)"] = lambda: plexus.all_to_all_single(y, x)
            calls["native isend+irecv (emulated)"] = _exchange(plexus, x, y, rank, world)
    out = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            measure = time.thread_time if cuda and name.startswith("native") and name != GRAPHED else clock
            for _ in range(iters // 10):
                fn()
            if cuda:
                cp.cuda.Device(0).synchronize()
            plexus.barrier()
            n = max(1, iters // GRAPH_CALLS) if name == GRAPHED else iters
            t0 = measure()
            for _ in range(n):
                fn()
            out[name].append((measure() - t0) / (n * (GRAPH_CALLS if name == GRAPHED else 1)) * 1e6)
            if cuda:
                cp.cuda.Device(0).synchronize()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cuda", action="store_true", help="real cupy arrays on GPU 0 (needs a GPU)")
    args = p.parse_args()
    from launch import run_ranks

    host = "host all_reduce (numpy)"
    for mode in (["cuda"] if args.cuda else ["ipc", "native"]):
        with tempfile.TemporaryDirectory() as folder:
            res = run_ranks(args.np, _rank, folder, args.iters, args.rounds, mode, timeout=900)
        _report(args, res, host)


def _report(args, res, host) -> None:
    per_round = {name: [max(r[name][i] for r in res) for i in range(args.rounds)] for name in res[0]}
    for name, times in per_round.items():
        ratio = [t / h for t, h in zip(times, per_round[host])]
        print(f"{name:40} {statistics.median(times):7.1f} us per call (spread {min(times):.1f}-{max(times):.1f}; "
              f"{statistics.median(ratio):5.2f}x the host call, spread {min(ratio):.2f}-{max(ratio):.2f}) "
              f"slowest of {args.np} ranks, {args.rounds} rounds")


if __name__ == "__main__":
    main()
