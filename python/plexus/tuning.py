"""What the tuner sees of a machine, and why it picks what it picks.

The C++ tuner predicts each algorithm's time with an alpha-beta model (time = alpha per message
+ bytes / beta per link class) for the group's shape. This module turns a Topology into that
shape and model (the network's beta from the slowest host's fastest NIC; NVLink for GPU hosts),
and predicts the choice for a described machine (`plexus info --topo`); plexus.explain
(distributed.py) asks a live group.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import _C
from .topology import Topology

COLLECTIVES = ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "barrier"]
# Message sizes `plexus info` evaluates: 8 B to 1 GiB, every factor of 8.
SIZES = [8 * 8**i for i in range(10)]
NVLINK_GBPS_PER_LINK = 25.0  # GB/s per NVLink (4th generation), each direction
NVLINK_ALPHA_US = 3.0


class Explanation(NamedTuple):
    collective: str
    nbytes: int
    chosen: str
    why: str
    predictions: List[Tuple[str, float, bool]]  # (algorithm, predicted seconds, runnable here)

    def __str__(self) -> str:
        lines = [f"{self.collective} of {human(self.nbytes)}: {self.chosen} ({self.why})"]
        for name, seconds, runnable in self.predictions:
            mark = "*" if name == self.chosen else " "
            note = "" if runnable else "  (cannot run on this group)"
            lines.append(f"  {mark} {name:14s} {seconds * 1e6:12.1f} us{note}")
        return "\n".join(lines)


def shape_of(topo: Topology, cma: bool = False) -> Dict[str, object]:
    """The group shape the tuner sees; `cma`: a host's ranks may read each other's memory."""
    per_host = topo.ranks_per_host
    return {"ranks": topo.world_size, "hosts": topo.num_hosts, "local": max(per_host),
            "uniform": min(per_host) == max(per_host), "shm": True, "cma": cma}


def _measured_settings() -> set:
    """Names set by PLEXUS_TUNER_FILE / PLEXUS_TUNER: measurements beat what the hardware claims."""
    text = os.environ.get("PLEXUS_TUNER", "").replace(";", "\n")
    path = os.environ.get("PLEXUS_TUNER_FILE")
    if path:
        try:
            with open(path) as f:
                text += "\n" + f.read()
        except OSError:
            pass  # the C++ side reports an unreadable file
    return {line.split("=", 1)[0].strip() for line in text.splitlines() if "=" in line.split("#", 1)[0]}


def cost_model_of(topo: Topology, base: Optional[Dict[str, Dict[str, float]]] = None) -> Dict[str, Dict[str, float]]:
    """The cost model for `topo`: `base` (default: the built-in constants, PLEXUS_TUNER_FILE and
    PLEXUS_TUNER) with the network's beta from the NICs (unless measured) and NVLink for GPU hosts."""
    model = {k: dict(v) for k, v in (base or _C.default_cost_model()).items()}
    if topo.num_hosts > 1:
        speeds = [topo.host_nic_gbps(h) for h in range(topo.num_hosts)]
        for link, measured in (("network", "net_gbps"), ("ucx", "ucx_gbps")):
            if all(s > 0 for s in speeds) and measured not in _measured_settings() and link in model:
                model[link]["gbps"] = min(speeds) / 8.0  # Gb/s -> GB/s
    nvlinks = [topo.gpu_nvlinks(h, 0, 1) for h in range(topo.num_hosts) if topo.num_gpus(h) > 1]
    if nvlinks and all(n > 0 for n in nvlinks):
        model["shm"] = {"alpha_us": NVLINK_ALPHA_US, "gbps": min(nvlinks) * NVLINK_GBPS_PER_LINK}
    return model


def predict(collective: str, nbytes: int, topo: Topology, model: Optional[Dict] = None,
            cma: bool = False) -> Explanation:
    """What the tuner would run for `collective` of `nbytes` on the machine `topo` (`cma`: a
    host's ranks may read each other's memory)."""
    model = model or cost_model_of(topo)
    shape = shape_of(topo, cma)
    chosen = _C.cheapest(collective, float(nbytes), shape, model)
    return Explanation(collective, nbytes, chosen, "lowest predicted time", list(_C.predict(collective, float(nbytes), shape, model)))


def plan(topo: Topology, collectives: Sequence[str] = COLLECTIVES, sizes: Sequence[int] = SIZES,
         model: Optional[Dict] = None, cma: bool = False) -> Dict[str, List[Tuple[int, int, str, float]]]:
    """Per collective, bands of sizes with the same choice: (from bytes, to bytes, algorithm,
    predicted seconds at the band's largest size)."""
    model = model or cost_model_of(topo)
    out: Dict[str, List[Tuple[int, int, str, float]]] = {}
    for coll in collectives:
        bands: List[Tuple[int, int, str, float]] = []
        for size in sizes:
            e = predict(coll, size, topo, model, cma)
            seconds = next(s for n, s, _ in e.predictions if n == e.chosen)
            if bands and bands[-1][2] == e.chosen:
                bands[-1] = (bands[-1][0], size, e.chosen, seconds)
            else:
                bands.append((size, size, e.chosen, seconds))
        out[coll] = bands
    return out


def human(nbytes: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:g} {unit}"
    return f"{int(nbytes)} B"
