"""Checks and fills in the host dicts of a topology (detected, gathered or written by hand).

Hand-written machine descriptions only need what they care about: a host needs "hostname" and
"ranks"; every other field has a default ("unknown": empty or 0). A present field of the wrong
type, or a missing required one, is a ValueError naming it, e.g. ``hosts[1].gpus[0].name``.
"""

import copy
import re

LINK_KINDS = ("self", "nvlink", "p2p", "pcie")
_REQUIRED = object()


def fail(where, problem):
    raise ValueError(f"topology: {where} {problem}")


def _type_ok(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object"}


def field(obj, key, kind, where, default=_REQUIRED):
    """obj[key] checked against `kind`; the default (copied) when absent."""
    if key not in obj:
        if default is _REQUIRED:
            fail(f"{where}.{key}", "is missing")
        return copy.deepcopy(default)
    value = obj[key]
    if not _type_ok(value, kind):
        fail(f"{where}.{key}", f"must be {_TYPE_NAMES[kind]}, not {type(value).__name__} {value!r}")
    return float(value) if kind is float else value


def obj(value, where):
    if not isinstance(value, dict):
        fail(where, f"must be an object, not {type(value).__name__}")
    return value


def parse_rate_gbps(rate):
    """'400 Gb/sec (4X NDR)' -> 400.0; 0.0 when there is no number."""
    m = re.match(r"\s*([0-9.]+)\s*(\w)?", rate or "")
    if not m:
        return 0.0
    try:
        value = float(m.group(1))
    except ValueError:
        return 0.0
    return value / 1000 if m.group(2) == "M" else value


def _records(host, key, where, spec):
    """A list of objects, each checked against spec: {field: (type, default)}."""
    out = []
    for i, item in enumerate(field(host, key, list, where, [])):
        at = f"{where}.{key}[{i}]"
        item = obj(item, at)
        rec = {name: field(item, name, kind, at, default) for name, (kind, default) in spec.items()}
        rec.update({k: copy.deepcopy(v) for k, v in item.items() if k not in rec})  # keep extras
        out.append(rec)
    return out


_NUMA = {"id": (int, _REQUIRED), "cpus": (str, ""), "memory_mib": (int, 0)}
_GPU = {"index": (int, None), "pci_bus_id": (str, ""), "name": (str, ""), "memory_mib": (int, 0),
        "numa_node": (int, -1)}
_NIC = {"name": (str, _REQUIRED), "operstate": (str, "up"), "speed_mbps": (int, 0), "ipv4": (str, ""),
        "mtu": (int, 0), "virtual": (bool, False), "numa_node": (int, -1)}
_IB = {"device": (str, _REQUIRED), "port": (int, 1), "state": (str, "ACTIVE"), "rate": (str, ""),
       "rate_gbps": (float, None), "link_layer": (str, "InfiniBand"), "netdev": (str, ""),
       "numa_node": (int, -1)}


def _matrix(host, key, where, n, kind, default):
    rows = field(host, key, list, where, None)
    if rows is None:
        return [[default(a, b) for b in range(n)] for a in range(n)]
    if len(rows) != n or any(not isinstance(r, list) or len(r) != n for r in rows):
        fail(f"{where}.{key}", f"must be a {n}x{n} matrix (one row and column per GPU)")
    for a, row in enumerate(rows):
        for b, v in enumerate(row):
            if not _type_ok(v, kind):
                fail(f"{where}.{key}[{a}][{b}]", f"must be {_TYPE_NAMES[kind]}, not {v!r}")
    return copy.deepcopy(rows)


def check_host(host, where):
    """A complete, checked copy of one host dict (its "ranks" are checked by the caller)."""
    host = obj(host, where)
    out = {"hostname": field(host, "hostname", str, where)}
    out["host_id"] = field(host, "host_id", str, where, "") or out["hostname"]
    out["ranks"] = list(field(host, "ranks", list, where))
    cpu = obj(field(host, "cpu", dict, where, {}), f"{where}.cpu")
    out["cpu"] = {"model": field(cpu, "model", str, f"{where}.cpu", ""),
                  "logical_cores": field(cpu, "logical_cores", int, f"{where}.cpu", 0),
                  "physical_cores": field(cpu, "physical_cores", int, f"{where}.cpu", 0)}
    out["memory_mib"] = field(host, "memory_mib", int, where, 0)
    out["numa"] = _records(host, "numa", where, _NUMA)

    gpus = _records(host, "gpus", where, _GPU)
    for i, g in enumerate(gpus):
        if g["index"] is None:
            g["index"] = i
        elif g["index"] != i:
            fail(f"{where}.gpus[{i}].index", f"is {g['index']}; GPUs must be listed in index order")
    out["gpus"] = gpus
    n = len(gpus)
    out["gpu_links"] = _matrix(host, "gpu_links", where, n, str, lambda a, b: "self" if a == b else "pcie")
    for a, row in enumerate(out["gpu_links"]):
        for b, kind in enumerate(row):
            if kind not in LINK_KINDS or (kind == "self") != (a == b):
                want = '"self"' if a == b else "one of " + ", ".join(k for k in LINK_KINDS if k != "self")
                fail(f"{where}.gpu_links[{a}][{b}]", f"is {kind!r}; it must be {want}")
    out["nvlinks"] = _matrix(host, "nvlinks", where, n, int, lambda a, b: 0)
    out["gpu_source"] = field(host, "gpu_source", str, where, "")

    out["nics"] = _records(host, "nics", where, _NIC)
    out["ib"] = _records(host, "ib", where, _IB)
    for p in out["ib"]:
        if p["rate_gbps"] is None:
            p["rate_gbps"] = parse_rate_gbps(p["rate"])
        if not p["rate"] and p["rate_gbps"]:
            p["rate"] = f"{p['rate_gbps']:g} Gb/sec"
    out.update({k: copy.deepcopy(v) for k, v in host.items() if k not in out})  # keep extras
    return out


def check_ranks(hosts, rank_hosts=None):
    """rank -> host index, from the hosts' "ranks"; each of 0..N-1 exactly once."""
    owner = {}
    for i, h in enumerate(hosts):
        if not h["ranks"]:
            fail(f"hosts[{i}].ranks", "is empty: every host must run at least one rank")
        for r in h["ranks"]:
            if not _type_ok(r, int) or r < 0:
                fail(f"hosts[{i}].ranks", f"holds {r!r}; ranks are integers >= 0")
            if r in owner:
                fail(f"hosts[{i}].ranks", f"holds rank {r}, which hosts[{owner[r]}] holds too")
            owner[r] = i
        h["ranks"].sort()
    world = len(owner)
    for r in range(world):
        if r not in owner:
            fail("hosts[*].ranks", f"has no host for rank {r} (ranks must be 0..{world - 1})")
    derived = [owner[r] for r in range(world)]
    if rank_hosts is not None and list(rank_hosts) != derived:
        fail("rank_hosts", f"is {list(rank_hosts)} but the hosts' ranks say {derived}")
    return derived
