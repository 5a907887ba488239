#!/usr/bin/env python3
"""GPU benchmarks (`kernels` runs in bench/gpu_check.sh; the all-reduce sweep there is now
plexus-bench --device cuda, beside NCCL and cupy a + b; `allreduce` here is the older cupy-only one):

  kernels    the CUDA reduction kernel (_C._cuda_reduce, SUM of 2 inputs into a third buffer) at
             256 MiB per buffer, against a device-to-device copy of the same bytes: GB/s counted as
             bytes read + written, and the kernel's % of the copy (target: >= 85% for float32 and
             bfloat16).
  allreduce  plexus.all_reduce(x, out=y) of float32 cupy arrays on 2 and 4 ranks sharing GPU 0
             (through CUDA IPC, or staged through host memory: the output line says which),
             against one process doing cupy.add(a, b, out=c) on the same sizes: algbw = bytes of
             one buffer / time, and plexus' % of cupy's (target: >= 70% for 2 ranks at 256 MiB).

Needs cupy and a GPU; exits with status 2 and says why when there is none. --out DIR writes
gpu_kernels.json / gpu_allreduce.json and appends to summary.txt there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time

MiB = 1 << 20
KERNEL_DTYPES = ["float32", "bfloat16", "float16", "float64", "int32", "int8"]
TARGETS = {"kernel": 0.85, "allreduce": 0.70}


def gpu_or_exit():
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        print(f"gpu_kernels: FAILED: cupy is not usable ({e}); a GPU with cupy is needed", file=sys.stderr)
        sys.exit(2)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        print(f"gpu_kernels: FAILED: no CUDA device ({e})", file=sys.stderr)
        sys.exit(2)
    if n < 1:
        print("gpu_kernels: FAILED: no CUDA device", file=sys.stderr)
        sys.exit(2)
    return cupy


def device_name(cp) -> str:
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def time_ms(cp, fn, iters: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean time of `iters` back-to-back calls (CUDA events)."""
    stream = cp.cuda.get_current_stream()
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(iters):
            fn()
        end.record(stream)
        end.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, end) / iters)
    return statistics.median(samples)


def bench_kernels(args) -> dict:
    cp = gpu_or_exit()
    from plexus import _C

    if not _C.built_with_cuda or not _C.cuda_runtime_available():
        print(f"gpu_kernels: FAILED: plexus cannot run its CUDA kernels here: {_C._cuda_runtime_status()}",
              file=sys.stderr)
        sys.exit(2)
    nbytes = args.kernel_mib * MiB
    a, b, c = (cp.empty(nbytes, cp.uint8) for _ in range(3))
    a.fill(0x3C)  # normal numbers in every float dtype
    b.fill(0x3C)
    stream = cp.cuda.get_current_stream()
    rt = cp.cuda.runtime
    copy_ms = time_ms(cp, lambda: rt.memcpyAsync(c.data.ptr, a.data.ptr, nbytes, rt.memcpyDeviceToDevice, stream.ptr), 20)
    copy_gbs = 2 * nbytes / copy_ms / 1e6
    rows = [{"what": "device-to-device copy", "bytes": nbytes, "ms": copy_ms, "gbs": copy_gbs, "pct_of_copy": 100.0}]
    codes = {n: i for i, n in enumerate(_C.DTYPES)}
    SUM = [o.upper() for o in _C.OPS].index("SUM")
    for dtype in KERNEL_DTYPES:
        esize = {"float64": 8, "float32": 4, "int32": 4, "int8": 1}.get(dtype, 2)
        n = nbytes // esize

        def run(dtype=dtype, n=n):
            _C._cuda_reduce(SUM, codes[dtype], c.data.ptr, [a.data.ptr, b.data.ptr], n, 1.0, stream.ptr)

        ms = time_ms(cp, run, 20)
        gbs = 3 * nbytes / ms / 1e6
        rows.append({"what": f"reduce SUM {dtype} (2 inputs)", "dtype": dtype, "bytes": nbytes, "ms": ms, "gbs": gbs,
                     "pct_of_copy": 100 * gbs / copy_gbs})
    # A quick correctness look at the last float32-sized result (the tests do the real checking).
    _C._cuda_reduce(SUM, codes["float32"], c.data.ptr, [a.data.ptr, b.data.ptr], nbytes // 4, 1.0, stream.ptr)
    stream.synchronize()
    got = cp.asnumpy(c[:16].view(cp.float32))
    want = 2 * cp.asnumpy(a[:16].view(cp.float32))
    ok = bool((got == want).all())
    lines = [f"CUDA reduction kernel vs device-to-device copy, {args.kernel_mib} MiB per buffer, {device_name(cp)}",
             f"{'':38} {'ms':>8} {'GB/s':>8} {'% copy':>7}"]
    for r in rows:
        lines.append(f"{r['what']:38} {r['ms']:8.3f} {r['gbs']:8.1f} {r['pct_of_copy']:6.1f}%")
    for dtype in ("float32", "bfloat16"):
        pct = next(r["pct_of_copy"] for r in rows if r.get("dtype") == dtype)
        verdict = "PASS" if pct >= 100 * TARGETS["kernel"] else "MISS"
        lines.append(f"target SUM {dtype} >= {100 * TARGETS['kernel']:.0f}% of copy: {verdict} ({pct:.1f}%)")
    lines.append(f"result spot check: {'ok' if ok else 'WRONG'}")
    report(args, "gpu_kernels", {"device": device_name(cp), "rows": rows, "check_ok": ok}, lines)
    return {"ok": ok}


# --- all-reduce sweep --------------------------------------------------------------------------


def _rank(rank, world, init_method, sizes, iters_for, results):
    try:
        import cupy as cp

        cp.cuda.Device(0).use()
        import plexus
        from plexus import device

        plexus.init_process_group(init_method=init_method, rank=rank, world_size=world)
        all_reduce = plexus.all_reduce
        stream = cp.cuda.get_current_stream()
        times = {}
        for size in sizes:
            x = cp.full(size // 4, rank + 1, cp.float32)
            y = cp.empty_like(x)
            iters = iters_for(size)
            all_reduce(x, out=y)
            ok = float(y[0]) == world * (world + 1) / 2 and float(y[-1]) == float(y[0])
            plexus.barrier()
            stream.synchronize()
            t0 = time.perf_counter()
            for _ in range(iters):
                all_reduce(x, out=y)
            stream.synchronize()
            times[size] = ((time.perf_counter() - t0) / iters, ok)
            plexus.barrier()
        plexus.destroy_process_group()
        results.put((rank, True, {"paths": dict(device.PATHS), "times": times}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        import traceback

        results.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _iters_for(size: int) -> int:
    return 5 if size >= 64 * MiB else 10 if size >= 4 * MiB else 30


def run_world(world: int, sizes, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    fd, path = tempfile.mkstemp(prefix="plexus-gpu-bench-")
    os.close(fd)
    os.remove(path)
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, f"file://{path}", sizes, _iters_for, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    got, deadline = {}, time.monotonic() + timeout
    try:
        while len(got) < world and time.monotonic() < deadline:
            try:
                r, ok, value = results.get(timeout=1)
                got[r] = (ok, value)
            except queue.Empty:
                if any(not p.is_alive() for r, p in enumerate(procs) if r not in got):
                    time.sleep(1)
                    while not results.empty():
                        r, ok, value = results.get()
                        got[r] = (ok, value)
                    if len(got) < world:
                        break
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    failed = {r: v for r, (ok, v) in got.items() if not ok}
    if failed or len(got) < world:
        missing = [r for r in range(world) if r not in got]
        return {"error": f"{world} ranks: failed {failed or ''} missing {missing} (timeout {timeout:.0f} s?)"}
    per_size = {}
    for size in sizes:
        per_size[size] = {"s": max(got[r][1]["times"][size][0] for r in range(world)),
                          "ok": all(got[r][1]["times"][size][1] for r in range(world))}
    return {"paths": got[0][1]["paths"], "sizes": per_size}


def cupy_add(sizes) -> dict:
    cp = gpu_or_exit()
    out = {}
    for size in sizes:
        a, b, c = (cp.ones(size // 4, cp.float32) for _ in range(3))
        out[size] = time_ms(cp, lambda a=a, b=b, c=c: cp.add(a, b, out=c), _iters_for(size)) / 1e3
        del a, b, c
    return out


def bench_allreduce(args) -> dict:
    cp = gpu_or_exit()
    sizes = [int(s) for s in args.sizes]
    base = cupy_add(sizes)
    data = {"device": device_name(cp), "cupy_add_s": base, "worlds": {}}
    lines = [f"same-GPU all_reduce (float32, out of place, max over ranks) vs cupy.add(a, b, out=c), {device_name(cp)}"]
    t_end = time.monotonic() + args.timeout
    for world in args.np:
        left = t_end - time.monotonic()
        if left < 10:
            lines.append(f"np={world}: not run (time budget spent)")
            continue
        res = run_world(world, sizes, left / max(1, len(args.np) - args.np.index(world)))
        data["worlds"][world] = res
        if "error" in res:
            lines.append(f"np={world}: FAILED: {res['error']}")
            continue
        how = "plexus.all_reduce, " + ", ".join(f"{k}: {v} calls" for k, v in res["paths"].items())
        lines.append(f"np={world} ({how})")
        lines.append(f"{'size':>10} {'plexus us':>11} {'algbw GB/s':>10} {'busbw GB/s':>10} {'cupy add us':>11}"
                     f" {'add GB/s':>9} {'% of add':>8} check")
        for size in sizes:
            s = res["sizes"][size]["s"]
            alg, add = size / s / 1e9, size / base[size] / 1e9
            bus = alg * 2 * (world - 1) / world
            lines.append(f"{_fmt(size):>10} {s * 1e6:11.1f} {alg:10.2f} {bus:10.2f} {base[size] * 1e6:11.1f}"
                         f" {add:9.2f} {100 * alg / add:7.1f}% {'ok' if res['sizes'][size]['ok'] else 'WRONG'}")
        big = max(sizes)
        if world == 2:
            pct = 100 * base[big] / res["sizes"][big]["s"]
            verdict = "PASS" if pct >= 100 * TARGETS["allreduce"] else "MISS"
            lines.append(f"target 2-rank {_fmt(big)} >= {100 * TARGETS['allreduce']:.0f}% of cupy add: {verdict} ({pct:.1f}%)")
    staged_sizes = [s for s in sizes if s <= 64 * MiB]
    left = t_end - time.monotonic()
    if 2 in args.np and staged_sizes and left > 20:
        # The same 2-rank sweep staged through host memory: what CUDA IPC saves.
        os.environ["PLEXUS_CUDA_IPC"] = "0"
        try:
            res = run_world(2, staged_sizes, left)
        finally:
            del os.environ["PLEXUS_CUDA_IPC"]
        data["staged_np2"] = res
        if "error" in res:
            lines.append(f"np=2 staged: FAILED: {res['error']}")
        else:
            ipc = data["worlds"].get(2, {}).get("sizes", {})
            lines.append("np=2 staged through host memory (PLEXUS_CUDA_IPC=0) vs CUDA IPC")
            lines.append(f"{'size':>10} {'staged us':>11} {'ipc us':>9} {'ipc speedup':>11}")
            for size in staged_sizes:
                st, ip = res["sizes"][size]["s"], ipc.get(size, {}).get("s")
                lines.append(f"{_fmt(size):>10} {st * 1e6:11.1f} {ip * 1e6 if ip else float('nan'):9.1f}"
                             f" {st / ip if ip else float('nan'):10.1f}x")
    report(args, "gpu_allreduce", data, lines)
    return data


def _fmt(size: int) -> str:
    for unit, n in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n} {unit}"
    return f"{size} B"


def report(args, name: str, data: dict, lines) -> None:
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
        with open(os.path.join(args.out, "summary.txt"), "a") as f:
            f.write(text + "\n\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=["kernels", "allreduce", "all"], default="all")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for the results (default: $OUT)")
    p.add_argument("--kernel-mib", type=int, default=256)
    p.add_argument("--np", type=int, nargs="+", default=[2, 4])
    p.add_argument("--sizes", nargs="+", default=[4096, 65536, MiB, 16 * MiB, 64 * MiB, 256 * MiB])
    p.add_argument("--timeout", type=float, default=240, help="seconds for the whole all-reduce sweep")
    args = p.parse_args()
    if args.what in ("kernels", "all"):
        bench_kernels(args)
    if args.what in ("allreduce", "all"):
        data = bench_allreduce(args)
        if any("error" in w for w in data["worlds"].values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
