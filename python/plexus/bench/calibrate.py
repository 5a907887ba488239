"""`plexus-bench --calibrate FILE`: measures the constants of the tuner's cost model on this
machine and writes them in the format PLEXUS_TUNER_FILE reads.

  shm: alpha from a shared-memory barrier between two ranks of one host (the model counts two
       messages), beta from a one-core memcpy (the direct algorithms are memory-bound);
  net: alpha from a barrier between ranks on two hosts (one message each way), beta from their
       two-rank all-reduce of 16 MiB (the model: 2 alpha + bytes / beta).
A class with no pair of ranks to measure it (one host, or one rank per host) is left out and
keeps its default.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

import numpy as np

import plexus

# Bytes of the bandwidth measurement (PLEXUS_CALIBRATE_BYTES, e.g. smaller on slow links).
BIG = int(os.environ.get("PLEXUS_CALIBRATE_BYTES") or (16 << 20))


def _timed(fn, iters: int) -> float:
    """The fastest of `iters` timed calls: a constant of the machine, and on a busy machine other
    work only ever adds to a call (a mean took that noise in and could flip the tuner's choice)."""
    fn()
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _pair_measure(group, big: bool, iters: int) -> Dict[str, float]:
    """Median over ranks is not needed: both ranks of the pair see the same times."""
    out = {"barrier": _timed(lambda: plexus.barrier(group=group), iters)}
    if big:
        x = np.ones(BIG // 4, dtype=np.float32)
        out["allreduce"] = _timed(lambda: plexus.all_reduce(x, group=group), max(3, iters // 20))
    return out


def calibrate(iters: int = 200) -> Optional[List[str]]:
    """Collective over the default group; returns the file's lines on rank 0 (None elsewhere)."""
    topo = plexus.get_topology()
    rank = plexus.get_rank()
    home = topo.host_of(0)
    local_peer = next((r for r in topo.ranks_on_host(home) if r != 0), None)
    remote_peer = next((r for r in range(topo.world_size) if topo.host_of(r) != home), None)
    lines = ["# plexus tuner constants, measured by plexus-bench --calibrate",
             f"# {topo.world_size} ranks on {topo.num_hosts} host(s)"]
    for peer, kind in ((local_peer, "shm"), (remote_peer, "net")):
        if peer is None:
            continue
        group = plexus.new_group([0, peer])  # every rank takes part in creating it
        if rank in (0, peer):
            m = _pair_measure(group, big=kind == "net", iters=iters)
            if kind == "shm":
                src = np.ones(64 << 20, dtype=np.uint8)
                dst = np.empty_like(src)
                copy = _timed(lambda: np.copyto(dst, src), 5)
                lines += [f"shm_alpha_us = {m['barrier'] / 2 * 1e6:.3f}", f"shm_gbps = {src.nbytes / copy / 1e9:.3f}"]
            else:
                alpha = m["barrier"]
                beta = BIG / max(m["allreduce"] - 2 * alpha, 1e-9)
                # The link the pair took: UCX on a fabric has its own constants.
                link = "ucx" if group.comm.transport_to(1 if rank == 0 else 0) == "ucx" else "net"
                lines += [f"{link}_alpha_us = {alpha * 1e6:.3f}", f"{link}_gbps = {beta / 1e9:.3f}"]
        plexus.barrier()
        plexus.destroy_process_group(group) if group is not plexus.GroupMember.NON_GROUP_MEMBER else None
    # Rank 0 measured (or took part in) every pair: it has all the lines.
    return lines if rank == 0 else None
