"""plexus-bench: nccl-tests-style microbenchmarks of plexus, side by side with gloo, MPI, NCCL.

    plexus-bench -np 4 -b 8 -e 64M -f 4 --vs gloo
    torchrun --nproc-per-node 4 -m plexus.bench -b 8 -e 64M
    mpirun -np 4 python -m plexus.bench --vs mpi
    plexus-bench -np 2 --device cuda --vs nccl --vs cupy-add     # GPU buffers (torch CUDA tensors)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence

from . import data, launch, memory, report, sweep
from .collectives import COLLECTIVES, op_for
from .systems import PeerUnavailable, check_importable, make_systems

PEERS = ("gloo", "mpi", "nccl", "cupy-add")
COLLECTIVE_CHOICES = tuple(COLLECTIVES) + ("all",)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'8' -> 8, '1K' -> 1024, '64M' -> 67108864, '1G', '1.5K' (powers of 1024, as nccl-tests)."""
    m = _SIZE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use a number with an optional K, M or G suffix, e.g. 8, 64K, 1M")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_size_list(text: str) -> List[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("--sizes needs at least one size, e.g. 8,64K,1M")
    return sizes


def sweep_sizes(minbytes: int, maxbytes: int, stepfactor: int = 2, stepbytes: int = 1 << 20,
                sizes: Optional[Sequence[int]] = None) -> List[int]:
    """The sizes to run: --sizes as given, else minbytes, then *stepfactor (or +stepbytes when the
    factor is 1) while <= maxbytes, as nccl-tests steps."""
    if sizes:
        return list(sizes)
    out, size = [], minbytes
    while size <= maxbytes:
        out.append(size)
        size = size * stepfactor if stepfactor > 1 else size + stepbytes
    return out


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plexus-bench", allow_abbrev=False,
        description="nccl-tests-style collective benchmarks for plexus, optionally side by side with gloo, MPI or NCCL.",
        epilog="Sizes take K, M, G suffixes (powers of 1024). Launch alone with -np N, or under torchrun or mpirun.")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("8"), help="smallest size (default 8)")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"), help="largest size (default 64M)")
    p.add_argument("-f", "--stepfactor", type=_positive, default=2, help="multiply the size by this (default 2; 1: add --stepbytes)")
    p.add_argument("-i", "--stepbytes", type=parse_size, default=parse_size("1M"), help="size increment when -f is 1 (default 1M)")
    p.add_argument("--sizes", type=parse_size_list, help="explicit sizes, e.g. 8,64K,1M,64M (overrides -b/-e/-f)")
    p.add_argument("-n", "--iters", type=_positive, default=20, help="timed iterations per size (default 20)")
    p.add_argument("--rounds", type=_positive, default=1,
                   help="time each size R times, systems interleaved, and report the median (noisy machines)")
    p.add_argument("-w", "--warmup_iters", type=_non_negative, default=5, help="untimed iterations first (default 5)")
    p.add_argument("-c", "--check", type=_non_negative, default=1, help="check results: 1 (default) or 0")
    p.add_argument("-o", "--op", default="sum", type=str.lower, choices=data.OPS, help="reduction op (default sum)")
    p.add_argument("-d", "--datatype", default="float32", help="float32/float (default), float16/half, bfloat16, "
                   "float64/double, int32, int64, int8, uint8")
    p.add_argument("-r", "--root", type=_non_negative, default=0, help="root of broadcast and reduce (default 0)")
    p.add_argument("--collective", default="all_reduce", choices=COLLECTIVE_CHOICES, help="what to run (default all_reduce)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where buffers live: cpu (numpy arrays, default) or cuda (torch CUDA tensors, GPU local_rank %% "
                   "GPUs; ranks share GPUs when there are more of them)")
    p.add_argument("--vs", action="append", default=[], choices=PEERS, help="also run this peer on the same sizes (repeatable)")
    p.add_argument("--json", metavar="PATH", help="write every result and the machine to PATH (and the table to PATH.txt)")
    p.add_argument("--plot", metavar="PNG", help="plot busbw against size into this file (needs matplotlib)")
    p.add_argument("--memcpy", action="store_true",
                   help="also time a plain one-core memcpy of each size (the memory-bandwidth limit), on rank 0")
    p.add_argument("--calibrate", metavar="FILE",
                   help="measure the tuner's cost-model constants here and write them to FILE (for PLEXUS_TUNER_FILE)")
    p.add_argument("-np", dest="np", type=_positive, help="start this many local ranks (without torchrun/mpirun)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.datatype = data.canonical_dtype(args.datatype)
    except ValueError as e:
        p.error(f"-d/--datatype: {e}")
    if args.device == "cuda":
        problem = cuda_problem()
        if problem:
            p.error(f"--device cuda: {problem}")
    if not args.sizes:
        if args.minbytes < 1:
            p.error("-b/--minbytes must be at least 1")
        if args.minbytes > args.maxbytes:
            p.error(f"-b/--minbytes {args.minbytes} is larger than -e/--maxbytes {args.maxbytes}")
        if args.stepfactor == 1 and args.stepbytes < 1:
            p.error("-i/--stepbytes must be at least 1 when -f is 1")
    elif min(args.sizes) < 1:
        p.error("--sizes: every size must be at least 1 byte")
    if args.op == "avg" and not data.is_floating(args.datatype):
        p.error(f"-o avg needs a floating-point datatype (plexus averages floats only), got {args.datatype}")
    if args.np is not None and args.root >= args.np:
        p.error(f"-r/--root {args.root} is not a rank of {args.np}")
    args.vs = list(dict.fromkeys(args.vs))  # repeated --vs: once each, in order
    try:
        for peer in args.vs:
            check_importable(peer)
        if args.datatype == "bfloat16":
            data.np_dtype("bfloat16")
        if args.plot:
            from .plot import require_matplotlib

            require_matplotlib()
    except (PeerUnavailable, RuntimeError) as e:
        p.error(str(e))
    args.collectives = list(COLLECTIVES) if args.collective == "all" else [args.collective]
    args.size_list = sweep_sizes(args.minbytes, args.maxbytes, args.stepfactor, args.stepbytes, args.sizes)
    return args


def cuda_problem() -> Optional[str]:
    """Why --device cuda cannot run here, or None."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA (pip install torch)"
    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    where = launch.detect()
    if where is None:
        try:
            return launch.spawn(args.np or 1, argv, use_mpirun="mpi" in args.vs)
        except RuntimeError as e:
            print(f"plexus-bench: error: {e}", file=sys.stderr)
            return 2
    return run_rank(args, where)


# --- one rank ----------------------------------------------------------------------------------


def _header(args, world, where, systems, notes, machine, hosts, devices) -> List[str]:
    n = world.size
    here = sum(1 for h in hosts if h.split(" ", 1)[1] == hosts[0].split(" ", 1)[1])
    colls = ", ".join(args.collectives)
    if args.sizes:
        steps = "# sizes: " + " ".join(str(s) for s in args.size_list)
    else:
        step = f"{args.stepfactor}(factor)" if args.stepfactor > 1 else f"{args.stepbytes}(bytes)"
        steps = f"# minBytes {args.minbytes} maxBytes {args.maxbytes} step: {step}"
    lines = [
        f"# plexus-bench: {colls}  ranks {n}  dtype {data.printed_dtype(args.datatype)}  op {args.op}  root {args.root}",
        f"{steps} warmup iters: {args.warmup_iters} iters: {args.iters} validation: {1 if args.check else 0}"
        + (f" rounds: {args.rounds} (median)" if args.rounds > 1 else ""),
        f"# launcher: {where.description}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"# machine: {machine['host']}: {report.machine_line(machine)}; {machine['os']}; python {machine['python']}",
        "# systems: " + ", ".join(f"{s.name} ({s.version})" for s in systems),
        "# time: average per iteration in microseconds, slowest rank; busbw = algbw x nccl-tests' factor",
    ]
    if here > machine["cores"]:
        lines.append(f"# note: {here} ranks on {machine['cores']} cores of this host: oversubscribed, "
                     "times include waiting for a core")
    lines += [f"# note: {note}" for note in notes]
    lines += ["#", "# Using devices"]
    lines += [f"#  Rank {r:2d} Group  0 Pid {h.split(' ', 1)[0]:>6s} on {h.split(' ', 1)[1]:>10s} {d}"
              for r, (h, d) in enumerate(zip(hosts, devices))]
    return lines + ["#"]


def run_calibration(args: argparse.Namespace, where: "launch.Launch") -> int:
    from .calibrate import calibrate

    world = launch.init_plexus(where, float(os.environ.get("PLEXUS_TIMEOUT") or 600))
    lines = calibrate()
    if lines is not None:
        with open(args.calibrate, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"plexus-bench: wrote {args.calibrate} (use it with PLEXUS_TUNER_FILE={args.calibrate})", file=sys.stderr)
    world.barrier()
    world.close()
    return 0


def run_rank(args: argparse.Namespace, where: "launch.Launch") -> int:
    if args.calibrate:
        return run_calibration(args, where)
    if args.np is not None and args.np != where.size:
        print(f"plexus-bench: error: -np {args.np} but the launcher started {where.size} ranks", file=sys.stderr)
        return 2
    if args.root >= where.size:
        print(f"plexus-bench: error: -r/--root {args.root} is not a rank of {where.size}", file=sys.stderr)
        return 2
    timeout = float(os.environ.get("PLEXUS_TIMEOUT") or 600)
    world = launch.init_plexus(where, timeout)
    printer = report.Printer(world.rank == 0)
    buffers = memory.make(args.device, where.local_rank)
    try:
        systems, notes = make_systems(args.vs, world, where.local_rank, timeout, buffers)
    except PeerUnavailable as e:
        if world.rank == 0:
            print(f"plexus-bench: error: {e}", file=sys.stderr)
        return 2
    machine = report.machine()
    hosts = world.gather_str(f"{os.getpid()} {machine['host']}")
    devices = world.gather_str(buffers.describe(where.local_rank))
    for line in _header(args, world, where, systems, notes, machine, hosts, devices):
        printer.line(line)

    settings = sweep.Settings(args.datatype, args.op, args.root, args.iters, args.warmup_iters, bool(args.check),
                              memcpy=args.memcpy, rounds=args.rounds)
    all_rows: List[sweep.Row] = []
    for name in args.collectives:
        coll = COLLECTIVES[name]
        if len(args.collectives) > 1:
            printer.line(f"# {name}")
        runnable = []
        for s in systems:
            why = s.unsupported(coll, args.datatype, op_for(coll, args.op))
            if why:
                printer.line(f"# {name}: {why}; skipped for {s.name}")
            else:
                runnable.append(s)
        if not runnable:
            printer.line(f"# {name}: no system to run it; skipped")
            continue
        primary, peers = runnable[0].name, [s.name for s in runnable[1:]]
        if primary != "plexus":
            printer.line(f"# {name}: the first columns are {primary}'s")
        for line in report.table_header(primary, peers, args.memcpy, args.rounds):
            printer.line(line)

        def on_row(row: sweep.Row) -> None:
            printer.line(report.row_line(row, primary, peers, args.memcpy, args.rounds))
            for warning in report.peer_warnings(row, peers):
                printer.line(warning)

        rows = sweep.run(coll, args.size_list, runnable, settings, world, on_row, printer.progress, buffers)
        for line in report.footer(rows, primary, peers):
            printer.line(line)
        all_rows += rows
    printer.close()

    if world.rank == 0:
        if args.json:
            head = {"tool": "plexus-bench", "machine": machine, "ranks": world.size, "launcher": where.description,
                    "settings": {"collectives": args.collectives, "sizes": args.size_list, "dtype": args.datatype,
                                 "device": args.device,
                                 "op": args.op, "root": args.root, "iters": args.iters, "rounds": args.rounds,
                                 "warmup_iters": args.warmup_iters, "check": bool(args.check)},
                    "systems": {s.name: s.version for s in systems}, "notes": notes}
            txt = report.write_json(args.json, report.json_document(all_rows, head, printer.lines))
            print(f"plexus-bench: wrote {args.json} and {txt}", file=sys.stderr)
        if args.plot and all_rows:
            from .plot import plot

            plot(args.plot, all_rows, world.size, report.machine_line(machine))
            print(f"plexus-bench: wrote {args.plot}", file=sys.stderr)
    world.barrier()  # nobody leaves while rank 0 still writes (a leaving peer looks like a failure)
    for s in systems:
        s.close()
    world.close()
    return report.exit_code(all_rows)
