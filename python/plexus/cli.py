"""The `plexus` command: `plexus info` prints the topology and the tuner's choices; `plexus trace
DIR` compares the ranks' flight-recorder dumps; `plexus token` prints a fresh job token."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import _C, _cma, device, tuning
from .topology import Topology


def _info(args: argparse.Namespace) -> int:
    if args.topo:
        topo = Topology.load(args.topo)
    else:
        host = Topology.local().hosts[0]
        ranks = args.ranks or (os.cpu_count() or 1)
        topo = Topology.from_hosts([host] * ranks)
    cma, cma_why = _cma.status() if not args.topo else (False, "not known for a described machine")
    model = tuning.cost_model_of(topo)
    print(topo.describe())
    print()
    print("cost model: " + "; ".join(f"{k}: alpha {v['alpha_us']:g} us, beta {v['gbps']:g} GB/s" for k, v in model.items()))
    print(f"group shape: {tuning.shape_of(topo, cma)}")
    print("transports (in order of preference; PLEXUS_TRANSPORTS picks among them): " +
          "; ".join(f"{name}: {summary}" for name, summary in _C.transports()))
    for line in _pair_transports():
        print(line)
    print(f"device arrays: {device.describe_paths()}")
    print(f"authentication: {_auth_status()}")
    print(f"cross-memory attach (process_vm_readv between a host's ranks): {cma_why}")
    collectives = args.collective or tuning.COLLECTIVES
    for coll, bands in tuning.plan(topo, collectives, model=model, cma=cma).items():
        print()
        print(f"{coll}:")
        print(f"  {'sizes':>24s}  {'algorithm':14s}  predicted (at the band's top)")
        for lo, hi, name, seconds in bands:
            span = tuning.human(lo) if lo == hi else f"{tuning.human(lo)} - {tuning.human(hi)}"
            print(f"  {span:>24s}  {name:14s}  {seconds * 1e6:12.1f} us")
    return 0


def _pair_transports() -> List[str]:
    """Which transport each class of pair takes (the table's order, PLEXUS_TRANSPORTS, whether
    UCX loads here and has InfiniBand/RoCE), and why; loads UCX when it is allowed."""
    names = [name for name, _ in _C.transports()]
    setting = os.environ.get("PLEXUS_TRANSPORTS")
    allowed = [n for n in names if setting is None or n in setting.split(",")]
    named = setting is not None and "ucx" in setting.split(",")
    ucx = _C.ucx_status() if "ucx" in allowed else None
    if ucx is None:
        ucx_line = "not allowed by PLEXUS_TRANSPORTS"
    elif not ucx["ok"]:
        ucx_line = f"not loaded: {ucx['problem']}"
    else:
        tls = ", ".join(ucx["transports"]) or "none"
        ucx_line = (f"UCX {ucx['version']} ({ucx['path']}); transports with a device: {tls}; "
                    + ("InfiniBand/RoCE present" if ucx["rdma"] else "no InfiniBand/RoCE transport"))
    usable = bool(ucx and ucx["ok"])
    if "shm" in allowed:
        same = "shm"
    elif named and usable:
        same = "ucx (PLEXUS_TRANSPORTS names it)"
    else:
        same = "tcp" if "tcp" in allowed else "none"
    if usable and (named or ucx["rdma"]):
        other = "ucx (" + ("PLEXUS_TRANSPORTS names it" if named else "InfiniBand/RoCE") + ")"
    elif "tcp" in allowed:
        why = ("UCX is not allowed" if ucx is None else "UCX did not load" if not usable
               else "UCX has no InfiniBand/RoCE here; PLEXUS_TRANSPORTS=shm,ucx,tcp uses it anyway")
        other = f"tcp ({why})"
    else:
        other = "none"
    cuda = "staged through pinned host memory"
    if usable and ucx["cuda_memory"] and os.environ.get("PLEXUS_UCX_DEVICE", "1") != "0":
        cuda = ("send/recv straight through UCX, which moves CUDA memory here (where the other rank's does too); "
                "collectives too in groups whose every pair goes so (one rank per host), reducing on the GPU; "
                "other groups' collectives " + cuda)
    elif usable:
        cuda += (" (PLEXUS_UCX_DEVICE=0)" if ucx["cuda_memory"] else " (UCX here cannot move CUDA memory itself)")
    return [f"ucx: {ucx_line}",
            f"pairs of ranks: same host: {same}; other hosts: {other} (every rank must agree)",
            f"device arrays across hosts: {cuda}"]


def _auth_status() -> str:
    if _C.job_authenticated():
        source = "PLEXUS_AUTH_TOKEN" if os.environ.get("PLEXUS_AUTH_TOKEN") else "PLEXUS_AUTH_FILE"
        return (f"a job token ({source}): the store and every peer connection prove they hold it "
                "(HMAC-SHA256 challenge-response); it never crosses the wire")
    return ("none: this job is unauthenticated; anyone who reaches the store port can read or change "
            "its keys and join it. Set PLEXUS_AUTH_TOKEN (or PLEXUS_AUTH_FILE) on every rank; "
            "`plexus token` prints one")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="plexus", description="Plexus: collective communication for AI clusters")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the topology and the algorithm chosen per collective and size")
    info.add_argument("--topo", metavar="FILE", help="a described machine (JSON, or the name of a shipped example)")
    info.add_argument("--ranks", type=int, help="ranks on this host when no --topo is given (default: one per core)")
    info.add_argument("--collective", action="append", choices=tuning.COLLECTIVES, help="only these (repeatable)")
    trace = sub.add_parser("trace", help="compare the ranks' flight-recorder dumps: who is behind, which calls disagree")
    trace.add_argument("dir", help="the folder of the dumps (PLEXUS_TRACE_DIR of the job; default $TMPDIR/plexus-trace)")
    sub.add_parser("token", help="print a fresh random job token (for PLEXUS_AUTH_TOKEN or PLEXUS_AUTH_FILE)")
    args = p.parse_args(argv)
    try:
        if args.command == "token":
            import secrets

            print(secrets.token_hex(32))
            return 0
        if args.command == "trace":
            from . import _trace

            print("\n".join(_trace.report(args.dir)))
            return 0
        return _info(args)
    except (OSError, ValueError) as e:
        print(f"plexus: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
