"""--plot out.png: bus bandwidth against message size, one line per system (out-of-place solid,
in-place dashed), one panel per collective."""

from __future__ import annotations

import importlib.util
from typing import Dict, List, Sequence

from .sweep import PLACEMENT_NAMES, Row, human_size


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib   (or: pip install 'plexus[bench]')")


def plot(path: str, rows: Sequence[Row], ranks: int, machine: str) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    by_coll: Dict[str, List[Row]] = {}
    for r in rows:
        by_coll.setdefault(r.collective, []).append(r)
    fig, axes = plt.subplots(len(by_coll), 1, figsize=(9, 4.5 * len(by_coll)), squeeze=False)
    for ax, (coll, coll_rows) in zip(axes[:, 0], by_coll.items()):
        sizes = [r.size for r in coll_rows]
        systems = list(coll_rows[0].results)
        for i, system in enumerate(systems):
            color = f"C{i}"
            for placement, style in (("out", "-"), ("in", "--")):
                busbw = [r.results[system][placement].busbw for r in coll_rows]
                label = f"{system} ({PLACEMENT_NAMES[placement]})"
                ax.plot(sizes, busbw, style, marker="o", markersize=3, color=color, label=label)
        ax.set_xscale("log", base=2)
        ticks = sizes if len(sizes) <= 12 else sizes[::2]
        ax.set_xticks(ticks)
        ax.set_xticklabels([human_size(s) for s in ticks], rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("message size (bytes, as nccl-tests counts it)")
        ax.set_ylabel("bus bandwidth (GB/s)")
        ax.set_title(f"{coll}, {ranks} ranks, {machine}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
