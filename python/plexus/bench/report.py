"""The table (nccl-tests' layout, plus one block of columns per peer), the machine description
and the JSON file. Only rank 0 prints; progress goes to stderr so stdout stays a clean table."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from .sweep import PLACEMENT_NAMES, PLACEMENTS, Measurement, Row


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> Dict[str, object]:
    # "cores": the host's; a launcher (mpirun) may bind each rank to fewer ("rank_cores").
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count() or 1,
            "rank_cores": usable_cores(), "logical_cpus": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}


def machine_line(m: Dict[str, object]) -> str:
    bound = f" (each rank bound to {m['rank_cores']})" if m.get("rank_cores", m["cores"]) < m["cores"] else ""
    return f"{m['cpu']}, {m['cores']} cores{bound}"


# --- table -------------------------------------------------------------------------------------


def _time(us: float) -> str:
    # nccl-tests' widths: fewer decimals as the number grows.
    if us >= 10000.0:
        return f"{us:7.0f}"
    if us >= 100.0:
        return f"{us:7.1f}"
    return f"{us:7.2f}"


def _wrong(w: Optional[int]) -> str:
    return "  N/A" if w is None else f"{w:5d}"


def ratio_spread(mine: Measurement, peer: Measurement) -> Optional[tuple]:
    """(median, lowest, highest) over rounds of the ratio mine busbw / peer busbw, each round's
    ratio taken within that round (the systems run interleaved); None with one round."""
    pairs = list(zip(mine.rounds_us, peer.rounds_us))
    if len(pairs) < 2 or any(m <= 0 or p <= 0 for m, p in pairs):
        return None
    ratios = sorted(p / m for m, p in pairs)  # same bytes: the busbw ratio is the time ratio, inverted
    return statistics.median(ratios), ratios[0], ratios[-1]


def table_header(primary: str, peers: Sequence[str], memcpy: bool = False, rounds: int = 1) -> List[str]:
    top = "# %10s  %12s  %8s  %6s  %6s           out-of-place                       in-place          " % ("", "", "", "", "")
    names = "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s %6s  %7s  %6s  %6s %6s" % (
        "size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time", "algbw", "busbw", "#wrong")
    units = "# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %5s  %7s  %6s  %6s  %5s" % (
        "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "")
    lines = []
    if peers:
        lines.append(f"# {primary} columns first; then, per peer, its out-of-place time and busbw and "
                     f"ratio = {primary} busbw / peer busbw (out-of-place; > 1: {primary} is faster)")
    if peers and rounds > 1:
        lines.append(f"# over {rounds} interleaved rounds: time and busbw are medians, ratio the median of the "
                     f"rounds' ratios and spread their lowest-highest")
    for p in peers:
        top += f"  {p + ' out-of-place':^25s}" + ("  %11s" % "" if rounds > 1 else "")
        names += "  %7s  %6s  %6s" % ("time", "busbw", "ratio")
        units += "  %7s  %6s  %6s" % ("(us)", "(GB/s)", "")
        if rounds > 1:
            names += "  %11s" % "spread"
            units += "  %11s" % ""
    if len(peers) > 1:
        lines.append(f"# vs best = {primary} busbw / the best peer's busbw at that size (out-of-place)")
        top += "  %7s" % ""
        names += "  %7s" % "vs best"
        units += "  %7s" % ""
    if memcpy:
        lines.append(f"# memcpy = one core copying the same bytes (the memory-bandwidth limit); "
                     f"of memcpy = {primary} out-of-place busbw / memcpy")
        top += "  %16s" % ""
        names += "  %7s  %7s" % ("memcpy", "of mcpy")
        units += "  %7s  %7s" % ("(GB/s)", "")
    return lines + [top.rstrip(), names, units]


def row_line(row: Row, primary: str, peers: Sequence[str], memcpy: bool = False, rounds: int = 1) -> str:
    line = "%12d  %12d  %8s  %6s  %6s" % (row.size, row.count, row.dtype, row.redop, "%6d" % row.root)
    for placement in PLACEMENTS:
        m = row.results[primary][placement]
        line += f"  {_time(m.time_us)}  {m.algbw:6.2f}  {m.busbw:6.2f}  {_wrong(m.wrong)}"
    mine = row.results[primary]["out"]
    for p in peers:
        m = row.results[p]["out"]
        spread = ratio_spread(mine, m)
        if spread:
            ratio = f"{spread[0]:6.2f}"
        else:
            ratio = f"{mine.busbw / m.busbw:6.2f}" if m.busbw > 0 else "   N/A"
        line += f"  {_time(m.time_us)}  {m.busbw:6.2f}  {ratio}"
        if rounds > 1:
            line += f"  {spread[1]:5.2f}-{spread[2]:<5.2f}" if spread else "  %11s" % "N/A"
    if len(peers) > 1:
        best = max(row.results[p]["out"].busbw for p in peers)
        line += f"  {mine.busbw / best:7.2f}" if best > 0 else "      N/A"
    if memcpy:
        share = f"{mine.busbw / row.memcpy_gbps:7.2f}" if row.memcpy_gbps > 0 else "    N/A"
        line += f"  {row.memcpy_gbps:7.2f}  {share}"
    return line


def peer_warnings(row: Row, peers: Sequence[str]) -> List[str]:
    """Comment lines for peers whose result was wrong (their #wrong has no column)."""
    out = []
    for p in peers:
        for placement in PLACEMENTS:
            w = row.results[p][placement].wrong
            if w:
                out.append(f"# WARNING: {p} {PLACEMENT_NAMES[placement]} at size {row.size}: {w} wrong elements")
    return out


def failed_checks(rows: Sequence[Row]) -> int:
    """How many results (system x size x placement) had wrong elements."""
    return sum(1 for r in rows for by_place in r.results.values() for m in by_place.values() if m.wrong)


def exit_code(rows: Sequence[Row]) -> int:
    """Non-zero when any result was wrong."""
    return 1 if failed_checks(rows) else 0


def avg_busbw(rows: Sequence[Row], system: str) -> float:
    values = [r.results[system][p].busbw for r in rows for p in PLACEMENTS if system in r.results]
    return sum(values) / len(values) if values else 0.0


def footer(rows: Sequence[Row], primary: str, peers: Sequence[str]) -> List[str]:
    bad = failed_checks(rows)
    lines = [f"# Out of bounds values : {bad} {'FAILED' if bad else 'OK'}",
             f"# Avg bus bandwidth    : {avg_busbw(rows, primary):g} "]
    for p in peers:
        lines.append(f"# Avg bus bandwidth {p} : {avg_busbw(rows, p):g} ")
    return lines + ["#"]


class Printer:
    """Prints the table on rank 0 (others print nothing) and keeps its lines for the .txt file."""

    def __init__(self, enabled: bool, out=None, err=None) -> None:
        self.enabled = enabled
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lines: List[str] = []
        self._live = False  # a progress line is showing on a terminal

    def line(self, text: str = "") -> None:
        if not self.enabled:
            return
        self._clear()
        self.lines.append(text)
        print(text, file=self.out, flush=True)

    def progress(self, text: str) -> None:
        if not self.enabled:
            return
        if self.err.isatty():
            self.err.write(f"\r\033[K[plexus-bench] {text}")
            self._live = True
        else:
            self.err.write(f"[plexus-bench] {text}\n")
        self.err.flush()

    def _clear(self) -> None:
        if self._live:
            self.err.write("\r\033[K")
            self.err.flush()
            self._live = False

    def close(self) -> None:
        self._clear()


# --- JSON --------------------------------------------------------------------------------------


def json_document(rows: Sequence[Row], header: Dict[str, object], table: Sequence[str]) -> Dict[str, object]:
    flat = []
    for r in rows:
        for system, by_place in r.results.items():
            for placement, m in by_place.items():
                flat.append({"collective": r.collective, "system": system,
                             "placement": PLACEMENT_NAMES[placement],
                             "size": r.size, "count": r.count, "type": r.dtype, "redop": r.redop, "root": r.root,
                             **asdict(m)})
        if r.memcpy_gbps:
            flat.append({"collective": r.collective, "system": "memcpy (one core)", "size": r.size,
                         "bytes_per_second": r.memcpy_gbps * 1e9})
    return {**header, "results": flat, "table": list(table)}


def write_json(path: str, doc: Dict[str, object]) -> str:
    """Writes PATH and, beside it, the table as PATH with a .txt suffix; returns the .txt path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    txt = os.path.splitext(path)[0] + ".txt"
    if os.path.abspath(txt) == os.path.abspath(path):
        txt = path + ".txt"
    with open(txt, "w") as f:
        f.write("\n".join(doc["table"]) + "\n")
    return txt
