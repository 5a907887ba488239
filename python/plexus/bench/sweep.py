"""The timing loop: for each size, every system runs out of place then in place, back to back
(`rounds` times over, interleaved, keeping each one's median time and every round's time).

Per (system, placement): fill the inputs, run `warmup` untimed iterations, barrier, time `iters`
iterations (time = wall time / iters on this rank, until the device is done with them; the table
shows the slowest rank), then refill the inputs, run once more and count the wrong elements of
that result (summed over ranks). Buffers live where `memory` says (bench/memory.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from . import data
from .collectives import Collective, bandwidths, describe_op, describe_root, op_for
from .memory import HostMemory
from .systems import Buffers, System

PLACEMENTS = ("out", "in")
PLACEMENT_NAMES = {"out": "out-of-place", "in": "in-place"}


@dataclass
class Settings:
    dtype: str  # canonical dtype name
    op: str
    root: int
    iters: int
    warmup: int
    check: bool
    memcpy: bool = False  # also time a one-core memcpy of each size (rank 0)
    rounds: int = 1  # timed runs per (system, placement), interleaved; the median counts


@dataclass
class Measurement:
    time_us: float  # the median over rounds of the slowest rank's time
    algbw: float
    busbw: float
    wrong: Optional[int]  # None when the check is off
    rounds_us: List[float] = field(default_factory=list)  # the slowest rank's time in each round


@dataclass
class Row:
    collective: str
    size: int  # bytes, as nccl-tests prints it
    count: int  # elements per rank and block
    dtype: str
    redop: str
    root: int
    results: Dict[str, Dict[str, Measurement]] = field(default_factory=dict)  # system -> placement -> m
    memcpy_gbps: float = 0.0  # one core copying `size` bytes (0: not measured)


def _run_one(system: System, coll: Collective, bufs: Buffers, src: np.ndarray, s: Settings,
             want_for: Callable[[bool], Optional[np.ndarray]], op: Optional[str], barrier: Callable[[], None],
             check: bool, memory):
    """(seconds per iteration on this rank, wrong elements or -1)."""

    def reset() -> None:
        memory.poison(bufs.base if bufs.in_place else bufs.out)
        memory.upload(bufs.inp, src)
        memory.sync()

    reset()
    step, _ = system.prepare(coll, bufs, op, s.root)
    for _ in range(s.warmup):
        step()
    memory.sync()
    barrier()
    t0 = time.perf_counter()
    for _ in range(s.iters):
        step()
    memory.sync()  # until the device is done, not until the work is queued
    seconds = (time.perf_counter() - t0) / s.iters
    if not check or not system.checks:
        return seconds, -1
    reset()
    step, result = system.prepare(coll, bufs, op, s.root)
    step()
    memory.sync()
    return seconds, data.count_wrong(memory.download(result()), want_for(bufs.in_place), op)


def run(coll: Collective, sizes: List[int], systems: List[System], s: Settings, world,
        on_row: Callable[[Row], None] = lambda row: None,
        progress: Callable[[str], None] = lambda text: None, memory=None) -> List[Row]:
    memory = memory or HostMemory()
    n, rank = world.size, world.rank
    dtype = data.np_dtype(s.dtype)
    op = op_for(coll, s.op)
    rows = []
    for index, size in enumerate(sizes):
        count = size // dtype.itemsize
        block = coll.block(count, n)
        send, recv = coll.counts(count, n)
        src = np.empty(send, dtype=dtype)
        data.fill(src, op, rank, n)
        oop = Buffers(memory.empty(send, dtype), memory.empty(recv, dtype), False)
        base = memory.empty(max(send, recv), dtype)
        ip = Buffers(*coll.in_place_views(base, rank, n, block), True, base)
        wants: Dict[bool, Optional[np.ndarray]] = {}

        def want_for(in_place: bool) -> Optional[np.ndarray]:
            # Built once per size and placement, shared by every system.
            if in_place not in wants:
                segments = coll.expected(rank, n, block, s.root, in_place)
                wants[in_place] = data.expected(segments, op, n, dtype, recv)
            return wants[in_place]

        # Rounds interleave the systems, so that a burst of noise does not hit one system only.
        times: Dict[tuple, List[float]] = {}
        wrong_of: Dict[tuple, float] = {}
        for rnd in range(s.rounds):
            for system in systems:
                for placement, bufs in zip(PLACEMENTS, (oop, ip)):
                    progress(f"{coll.name} {human_size(coll.nbytes(count, n, dtype.itemsize))} "
                             f"({index + 1}/{len(sizes)}) {system.name} {PLACEMENT_NAMES[placement]}"
                             + (f" round {rnd + 1}/{s.rounds}" if s.rounds > 1 else ""))
                    seconds, wrong = _run_one(system, coll, bufs, src, s, want_for, op, world.barrier,
                                              s.check and rnd == 0, memory)
                    times.setdefault((system.name, placement), []).append(seconds)
                    wrong_of.setdefault((system.name, placement), wrong)
        local: List[float] = []
        for key, secs in times.items():  # in system, placement order: every round's time, then #wrong
            local += secs + [wrong_of[key]]
        memcpy_gbps = _memcpy_gbps(count, dtype, s) if s.memcpy and rank == 0 else 0.0
        world.barrier()  # the other ranks wait idle: the copy has the core to itself
        everyone = world.gather(local)
        per_key = everyone.reshape(everyone.shape[0], -1, s.rounds + 1)  # rank, key, rounds + #wrong
        round_seconds = per_key[:, :, :s.rounds].max(axis=0)  # key, round: the slowest rank
        seconds = np.median(round_seconds, axis=1)
        wrong = per_key[:, :, s.rounds].sum(axis=0)
        nbytes = coll.nbytes(count, n, dtype.itemsize)
        row = Row(coll.name, nbytes, block, data.printed_dtype(s.dtype), describe_op(coll, s.op),
                  describe_root(coll, s.root), memcpy_gbps=memcpy_gbps)
        k = 0
        for system in systems:
            row.results[system.name] = {}
            for placement in PLACEMENTS:
                algbw, busbw = bandwidths(nbytes, seconds[k], coll.factor(n))
                row.results[system.name][placement] = Measurement(
                    seconds[k] * 1e6, algbw, busbw, int(wrong[k]) if s.check and system.checks else None,
                    [float(t) * 1e6 for t in round_seconds[k]])
                k += 1
        rows.append(row)
        on_row(row)
    return rows


def _memcpy_gbps(count: int, dtype: np.dtype, s: Settings) -> float:
    """GB/s of a plain copy of `count` elements (the bytes of one rank's buffer) on one core."""
    src = np.ones(max(count, 1), dtype=dtype)
    dst = np.empty_like(src)
    for _ in range(s.warmup):
        np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(s.iters):
        np.copyto(dst, src)
    seconds = (time.perf_counter() - t0) / s.iters
    return src.nbytes / seconds / 1e9


def human_size(nbytes: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}B" if nbytes < 1024 else f"{nbytes / 1024:.1f}K"
