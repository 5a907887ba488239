"""The machine a job runs on: its hosts, which ranks live on each, and each host's CPU, NUMA
nodes, GPUs (with the links between them), NICs and InfiniBand ports.

Each rank detects its own host (``_C.detect_host_topology()``); the per-rank dicts are merged
by host id (``Topology.from_hosts``). A Topology can be written to and read from JSON, so tests
and ``plexus info --topo`` can describe machines we do not have: see ``topologies/*.json``.

Environment: ``PLEXUS_TOPO_FILE`` replaces detection with a described machine (a path, or the
name of a file shipped in ``topologies/``); ``PLEXUS_TOPO_DUMP_FILE`` writes the topology in use.
"""

import copy
import json
import os

from . import _topo_schema as schema

VERSION = 1
ENV_FILE = "PLEXUS_TOPO_FILE"
ENV_DUMP = "PLEXUS_TOPO_DUMP_FILE"
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies")


class Topology:
    """An immutable-by-convention value: hosts (dicts, each with its "ranks") and rank_hosts."""

    def __init__(self, hosts, rank_hosts=None):
        if not isinstance(hosts, list) or not hosts:
            schema.fail("hosts", "must be a non-empty list of host objects")
        self._hosts = [schema.check_host(h, f"hosts[{i}]") for i, h in enumerate(hosts)]
        if rank_hosts is not None and not isinstance(rank_hosts, list):
            schema.fail("rank_hosts", "must be a list of host indices")
        self._rank_hosts = schema.check_ranks(self._hosts, rank_hosts)

    # ---- construction ----
    @classmethod
    def from_hosts(cls, per_rank_host_dicts):
        """One host dict per rank (rank = position); ranks with the same host id share a host."""
        hosts, index = [], {}
        for rank, h in enumerate(per_rank_host_dicts):
            if not isinstance(h, dict):
                schema.fail(f"rank {rank}'s host", f"must be a dict, not {type(h).__name__}")
            key = h.get("host_id") or h.get("hostname")
            if key not in index:
                index[key] = len(hosts)
                hosts.append(dict(copy.deepcopy(h), ranks=[]))
            hosts[index[key]]["ranks"].append(rank)
        return cls(hosts)

    @classmethod
    def local(cls):
        """This process alone, as detected now."""
        from . import _C  # here, so that loading described machines needs no compiled module

        return cls.from_hosts([_C.detect_host_topology()])

    @classmethod
    def from_dict(cls, data):
        schema.obj(data, "the top level")
        version = schema.field(data, "version", int, "topology")
        if version < 1 or version > VERSION:
            schema.fail("topology.version", f"is {version}; this plexus reads version {VERSION}")
        return cls(schema.field(data, "hosts", list, "topology"), data.get("rank_hosts"))

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"topology: not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path):
        """Reads a JSON file; a bare name not found as a path is looked up in topologies/."""
        path = os.fspath(path)
        if not os.path.exists(path) and os.sep not in path:
            shipped = os.path.join(EXAMPLES_DIR, path if path.endswith(".json") else path + ".json")
            if os.path.exists(shipped):
                path = shipped
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self):
        return {"version": VERSION, "hosts": copy.deepcopy(self._hosts), "rank_hosts": list(self._rank_hosts)}

    def to_json(self):
        return _format(self.to_dict()) + "\n"

    def dump(self, path):
        """Writes atomically: ranks dumping to one path never leave a torn file."""
        path = os.fspath(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    # ---- queries ----
    @property
    def hosts(self):
        return self._hosts

    @property
    def rank_hosts(self):
        return list(self._rank_hosts)

    @property
    def world_size(self):
        return len(self._rank_hosts)

    @property
    def num_hosts(self):
        return len(self._hosts)

    @property
    def ranks_per_host(self):
        return [len(h["ranks"]) for h in self._hosts]

    def ranks_on_host(self, host):
        return list(self._host(host)["ranks"])

    def host_of(self, rank):
        return self._rank_hosts[rank]

    def num_gpus(self, host):
        return len(self._host(host)["gpus"])

    def gpu_link(self, host, gpu_a, gpu_b):
        """'self', 'nvlink', 'p2p' or 'pcie'."""
        h = self._host(host)
        for g in (gpu_a, gpu_b):
            if not 0 <= g < len(h["gpus"]):
                raise IndexError(f"host {host} has {len(h['gpus'])} GPU(s); there is no GPU {g}")
        return "self" if gpu_a == gpu_b else h["gpu_links"][gpu_a][gpu_b]

    def gpu_nvlinks(self, host, gpu_a, gpu_b):
        self.gpu_link(host, gpu_a, gpu_b)  # bounds check
        return self._host(host)["nvlinks"][gpu_a][gpu_b]

    def host_nic_gbps(self, host):
        """The fastest usable port: an ACTIVE InfiniBand/RoCE port or an up NIC; 0.0 if unknown."""
        return max(_nic_speeds(self._host(host)), default=0.0)

    def host_nic_total_gbps(self, host):
        """Sum over the usable ports (multi-rail hosts: one NIC per GPU)."""
        h = self._host(host)
        ib = [p["rate_gbps"] for p in h["ib"] if p["state"].upper() == "ACTIVE"]
        return float(sum(ib)) if ib else max(_nic_speeds(h), default=0.0)

    def describe(self):
        from ._topo_describe import describe

        return describe(self)

    def _host(self, host):
        if not 0 <= host < len(self._hosts):
            raise IndexError(f"there is no host {host}: the topology has {len(self._hosts)}")
        return self._hosts[host]

    def __eq__(self, other):
        return isinstance(other, Topology) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Topology({self.num_hosts} host(s), {self.world_size} rank(s), ranks per host {self.ranks_per_host})"


def _nic_speeds(h):
    for p in h["ib"]:
        if p["state"].upper() == "ACTIVE" and p["rate_gbps"] > 0:
            yield float(p["rate_gbps"])
    for n in h["nics"]:
        if n["operstate"] == "up" and n["speed_mbps"] > 0:
            yield n["speed_mbps"] / 1000.0


def _format(value, depth=0):
    """JSON with one line per leaf object or list, so matrices and NIC lists stay readable."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
        body = ",\n".join(f"{inner}{json.dumps(k)}: {_format(v, depth + 1)}" for k, v in value.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _format(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def examples():
    """Names of the described machines shipped with plexus."""
    if not os.path.isdir(EXAMPLES_DIR):
        return []
    return sorted(f for f in os.listdir(EXAMPLES_DIR) if f.endswith(".json"))


def topology_from_env_or(detected):
    """The machine named by PLEXUS_TOPO_FILE when set, else `detected`."""
    path = os.environ.get(ENV_FILE, "").strip()
    if not path:
        return detected
    try:
        return Topology.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{ENV_FILE}={path}: {e}") from None


def maybe_dump(topo):
    """Writes `topo` to PLEXUS_TOPO_DUMP_FILE when set; returns the path written, or None."""
    path = os.environ.get(ENV_DUMP, "").strip()
    if not path:
        return None
    topo.dump(path)
    return path
