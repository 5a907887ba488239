#!/usr/bin/env python3
"""Device send/recv between 2 local ranks: each iteration every rank sends an array to the next
rank and receives one from the one before (isend + irecv, both waited for, the stream
synchronised), from 4 B to --max bytes, on the native path (lanes, inboxes) and staged through
host memory (PLEXUS_DEVICE_NATIVE=0), side by side in one run, beside a device-to-device copy of
the same bytes on each rank (cupy). Prints, per size, the median per exchange of --rounds
interleaved rounds (slowest rank) with its spread, and the ratio to the staged path.

    python bench/device_messages.py            # a GPU with cupy (ranks share GPU 0; MPS helps)
    python bench/device_messages.py --emulated # no GPU: the emulated device (protocol, not speed)

With --ucx TLS the pair goes through UCX (PLEXUS_TRANSPORTS=ucx, UCX_TLS=TLS), as two hosts
would: straight through UCX's message port (plexus.device.direct) against staged
(PLEXUS_UCX_DEVICE=0). On a GPU, TLS must let UCX move CUDA memory (e.g. tcp,cuda_copy,self); with
--emulated the device memory is host memory, so what differs is the host's copies and protocol.
With --ucx TLS --all-reduce it times an all_reduce (float32 sum) of the array instead of the
exchange: straight through UCX (algorithms/port_flat, reducing on the device) against the staged
pipeline that crosses hosts otherwise (CUDA IPC off in both, as between hosts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _rank(rank, world, folder, sizes, iters, rounds, emulated, ucx, all_reduce=False):
    import numpy as np

    import plexus
    from plexus import device

    if emulated:
        from fake_cuda import FakeCuda
        from plexus.device import ipc, libraries

        fake = FakeCuda(folder, rank, native=not ucx)
        ipc.set_driver(fake)
        if ucx:
            from test_device_logic import FakeOps

            libraries._OPS["cupy"] = FakeOps()  # staging through the fake memory
            libraries._OPS["cupy"].log = _NoLog()
        alloc, sync, copy = (lambda n: fake.array(np.ones(n // 4, np.float32))), (lambda: None), None
    else:
        import cupy as cp

        cp.cuda.Device(0).use()
        alloc, sync = (lambda n: cp.ones(n // 4, cp.float32)), cp.cuda.Device(0).synchronize
        copy = lambda dst, src: dst.__setitem__(Ellipsis, src)  # noqa: E731
    plexus.all_reduce(alloc(4))  # sets the native path up (or finds it declined)
    to, frm = (rank + 1) % world, (rank - 1) % world
    out = {}
    device.PATHS.clear()
    for _ in range(rounds):
        for n in sizes:
            x, y = alloc(n), alloc(n)

            def exchange():
                if all_reduce:
                    plexus.all_reduce(x)
                    return
                a, b = plexus.isend(x, to), plexus.irecv(y, frm)
                a.wait()
                b.wait()
            todo = [("exchange", exchange)] + ([("d2d copy", lambda: copy(y, x))] if copy else [])
            for name, fn in todo:
                fn()
                sync()
                plexus.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                sync()
                out.setdefault((name, n), []).append((time.perf_counter() - t0) / iters * 1e6)
    out["paths"] = sorted(device.PATHS)
    return out


class _NoLog(list):
    """FakeOps' log, kept empty (a benchmark makes millions of copies)."""

    def append(self, item) -> None:
        pass


def _bytes(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max", type=_bytes, default=256 << 20, help="largest message in bytes, K/M/G allowed (256M)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--emulated", action="store_true", help="no GPU: the emulated device (tests/fake_cuda.py)")
    p.add_argument("--ucx", metavar="TLS", default="", help="through UCX with UCX_TLS=TLS: direct against staged")
    p.add_argument("--all-reduce", action="store_true", help="with --ucx: time all_reduce instead of send/recv")
    args = p.parse_args()
    if args.all_reduce and not args.ucx:
        p.error("--all-reduce goes with --ucx")
    from launch import run_ranks

    sizes = [4 << (2 * k) for k in range(20) if 4 << (2 * k) <= args.max]
    paths = {"native": {}, "staged": {"PLEXUS_DEVICE_NATIVE": "0"}}
    if args.ucx:
        # As between hosts: each rank a pretend host of its own (tests/launch.py), so no native
        # kernels or CUDA IPC between them.
        base = {"PLEXUS_TRANSPORTS": "ucx", "UCX_TLS": args.ucx, "PLEXUS_HOST_ID_BY_RANK": "h0,h1",
                "PLEXUS_CUDA_IPC": "0", "PLEXUS_DEVICE_NATIVE": "0"}
        paths = {"ucx": base, "staged": dict(base, PLEXUS_UCX_DEVICE="0")}
    elif args.emulated:
        paths.pop("staged")  # staging needs cupy
    res = {}
    for path, env in paths.items():
        with tempfile.TemporaryDirectory() as folder:
            res[path] = run_ranks(2, _rank, folder, sizes, args.iters, args.rounds, args.emulated, bool(args.ucx),
                                  args.all_reduce, env=env, timeout=900)
    what = "us per all_reduce" if args.all_reduce else "us per exchange"
    print(f"{'bytes':>11} {'path':>8} {what:>26} {'GB/s':>7} {'x staged':>9}")
    for n in sizes:
        rows = {path: [max(r[("exchange", n)][i] for r in got) for i in range(args.rounds)] for path, got in res.items()}
        first = next(iter(res.values()))
        if ("d2d copy", n) in first[0]:
            rows["d2d copy"] = [max(r[("d2d copy", n)][i] for r in first) for i in range(args.rounds)]
        for path, times in rows.items():
            med = statistics.median(times)
            ratio = ""
            if "staged" in rows and path != "staged":
                ratio = f"{statistics.median([s / t for s, t in zip(rows['staged'], times)]):8.2f}x"
            print(f"{n:11d} {path:>8} {med:10.1f} ({min(times):.1f}-{max(times):.1f}) {n / med / 1e3:7.2f} {ratio:>9}")
    for path, got in res.items():  # how the calls went (plexus.device.PATHS), so a wrong setup shows
        print(f"# {path}: {got[0]['paths']}")


if __name__ == "__main__":
    main()
