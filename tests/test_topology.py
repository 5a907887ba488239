"""Topology detection (this host), the JSON form of a job's topology, the described example
machines and the helpers the tuner reads (ranks per host, GPU links, NIC speed)."""

from __future__ import annotations

import ctypes
import json

import pytest

from plexus import _C
from plexus.topology import Topology, examples, maybe_dump, topology_from_env_or


def host(name, ranks, **extra):
    return dict({"hostname": name, "ranks": ranks}, **extra)


def doc(*hosts, **top):
    return json.dumps(dict({"version": 1, "hosts": list(hosts)}, **top))


# ---- detection on this machine ----

def test_detect_this_host_structure():
    h = _C.detect_host_topology()
    assert isinstance(h["hostname"], str) and h["hostname"]
    assert h["hostname"] in h["host_id"]
    cpu = h["cpu"]
    assert isinstance(cpu["model"], str)
    assert cpu["logical_cores"] >= 1 and 1 <= cpu["physical_cores"] <= cpu["logical_cores"]
    assert isinstance(h["memory_mib"], int) and h["memory_mib"] > 0
    assert h["numa"], "at least one NUMA node, even without /sys/devices/system/node"
    for node in h["numa"]:
        assert isinstance(node["id"], int) and isinstance(node["cpus"], str) and node["memory_mib"] >= 0
    n = len(h["gpus"])
    assert len(h["gpu_links"]) == n and all(len(row) == n for row in h["gpu_links"])
    assert len(h["nvlinks"]) == n
    assert all(h["gpu_links"][i][i] == "self" for i in range(n))
    assert h["gpu_source"] in ("", "nvml", "cuda")
    assert all(nic["name"] != "lo" for nic in h["nics"])
    assert h["nics"], "this machine has a network interface"
    for nic in h["nics"]:
        assert isinstance(nic["name"], str) and isinstance(nic["operstate"], str)
        assert isinstance(nic["speed_mbps"], int) and nic["speed_mbps"] >= 0
        assert isinstance(nic["ipv4"], str) and isinstance(nic["virtual"], bool)
    for port in h["ib"]:
        assert isinstance(port["rate_gbps"], float) and port["port"] >= 1


def test_local_topology_is_one_host_one_rank_and_round_trips(tmp_path):
    t = Topology.local()
    assert (t.num_hosts, t.world_size, t.ranks_per_host, t.rank_hosts) == (1, 1, [1], [0])
    assert Topology.from_json(t.to_json()) == t
    t.dump(tmp_path / "local.json")
    assert Topology.load(tmp_path / "local.json") == t
    assert t.host_nic_gbps(0) >= 0.0
    text = t.describe()
    assert t.hosts[0]["hostname"] in text and "cpu" in text


def _nvml_present():
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _nvml_present(), reason="no NVIDIA driver (libnvidia-ml.so.1): GPU detection not exercised")
def test_detect_gpus_with_driver():
    h = _C.detect_host_topology()
    assert h["gpu_source"] == "nvml" and h["gpus"]
    for i, g in enumerate(h["gpus"]):
        assert g["index"] == i and g["name"] and g["memory_mib"] > 0
        assert len(g["pci_bus_id"]) == 12 and g["pci_bus_id"] == g["pci_bus_id"].lower()
    for a, row in enumerate(h["gpu_links"]):
        for b, kind in enumerate(row):
            assert kind == h["gpu_links"][b][a]
            assert (kind == "nvlink") == (h["nvlinks"][a][b] > 0)


# ---- described machines ----

def test_examples_are_shipped():
    assert {"dgx-h100-2node.json", "cluster-16x8-400g.json", "2host-4gpu-nvlink-400g.json"} <= set(examples())


def test_dgx_h100_two_nodes():
    t = Topology.load("dgx-h100-2node.json")
    assert (t.num_hosts, t.world_size, t.ranks_per_host) == (2, 16, [8, 8])
    assert t.ranks_on_host(1) == list(range(8, 16)) and t.host_of(9) == 1
    assert t.rank_hosts == [0] * 8 + [1] * 8
    assert all(t.gpu_link(h, a, b) == "nvlink" for h in (0, 1) for a in range(8) for b in range(8) if a != b)
    assert t.gpu_link(0, 3, 3) == "self" and t.gpu_nvlinks(0, 0, 5) == 18
    assert t.host_nic_gbps(0) == t.host_nic_gbps(1) == 400.0
    assert t.host_nic_total_gbps(0) == 3200.0
    assert len(t.hosts[0]["ib"]) == 8
    text = t.describe()
    assert "2 host(s), 16 rank(s), 8 per host" in text and "NV18" in text and "400 Gb/s" in text
    assert "same hardware as host 0" in text


def test_cluster_16x8_and_2host_4gpu():
    c = Topology.load("cluster-16x8-400g")  # the shipped name works without ".json" too
    assert (c.num_hosts, c.world_size, c.ranks_per_host) == (16, 128, [8] * 16)
    assert c.ranks_on_host(15) == list(range(120, 128))
    assert all(c.host_nic_gbps(h) == 400.0 for h in range(16))
    assert c.num_gpus(3) == 8 and c.gpu_link(3, 0, 7) == "pcie"

    t = Topology.load("2host-4gpu-nvlink-400g.json")
    assert (t.num_hosts, t.world_size, t.ranks_per_host) == (2, 8, [4, 4])
    assert t.gpu_link(1, 0, 3) == "nvlink" and t.host_nic_gbps(1) == 400.0


def test_helpers_reject_bad_indices():
    t = Topology.load("2host-4gpu-nvlink-400g.json")
    with pytest.raises(IndexError, match="no GPU 4"):
        t.gpu_link(0, 0, 4)
    with pytest.raises(IndexError, match="no host 2"):
        t.ranks_on_host(2)


def test_minimal_description_gets_defaults():
    t = Topology.from_json(doc(host("a", [0, 1], gpus=[{"name": "G"}, {"name": "G"}],
                                    ib=[{"device": "mlx5_0", "rate": "200 Gb/sec (4X HDR)"},
                                        {"device": "mlx5_1", "state": "DOWN", "rate_gbps": 400}],
                                    nics=[{"name": "eth0", "speed_mbps": 100000}]),
                               host("b", [2])))
    assert t.ranks_per_host == [2, 1] and t.rank_hosts == [0, 0, 1]
    assert t.gpu_link(0, 0, 1) == "pcie" and t.hosts[0]["host_id"] == "a"
    assert t.hosts[0]["ib"][0]["rate_gbps"] == 200.0
    assert t.host_nic_gbps(0) == 200.0  # the 400 Gb/s port is down; eth0 is 100
    assert t.host_nic_gbps(1) == 0.0  # nothing known
    assert Topology.from_json(t.to_json()) == t


# ---- invalid input: ValueError naming the field ----

@pytest.mark.parametrize("text, field", [
    ("{not json", "not valid JSON"),
    ("[]", "top level"),
    (json.dumps({"hosts": []}), "version"),
    (json.dumps({"version": 99, "hosts": []}), "version"),
    (json.dumps({"version": 1}), "hosts"),
    (doc(), "hosts"),
    (doc({"ranks": [0]}), r"hosts\[0\]\.hostname"),
    (doc(host("a", None)), r"hosts\[0\]\.ranks"),
    (doc(host("a", [0]), {"hostname": "b"}), r"hosts\[1\]\.ranks"),
    (doc(host("a", [0], gpus=[{"name": 5}])), r"hosts\[0\]\.gpus\[0\]\.name"),
    (doc(host("a", [0], cpu={"logical_cores": "8"})), r"hosts\[0\]\.cpu\.logical_cores"),
    (doc(host("a", [0], gpus=[{}, {}], gpu_links=[["self"]])), r"hosts\[0\]\.gpu_links"),
    (doc(host("a", [0], gpus=[{}, {}], gpu_links=[["self", "warp"], ["pcie", "self"]])),
     r"hosts\[0\]\.gpu_links\[0\]\[1\]"),
    (doc(host("a", [0], nics=[{"speed_mbps": 1}])), r"hosts\[0\]\.nics\[0\]\.name"),
    (doc(host("a", [0], ib=[{"device": "mlx5_0", "rate_gbps": "fast"}])), r"hosts\[0\]\.ib\[0\]\.rate_gbps"),
    (doc(host("a", [0, 1]), host("b", [1])), "rank 1"),
    (doc(host("a", [0]), host("b", [2])), "rank 1"),
    (doc(host("a", [0]), host("b", [1]), rank_hosts=[1, 0]), "rank_hosts"),
])
def test_invalid_json_names_the_field(text, field):
    with pytest.raises(ValueError, match=field):
        Topology.from_json(text)


def test_load_names_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(doc({"ranks": [0]}))
    with pytest.raises(ValueError, match=r"bad\.json.*hostname"):
        Topology.load(p)


# ---- merging per-rank detections ----

def test_from_hosts_merges_ranks_on_one_host():
    a = {"hostname": "a", "host_id": "a/boot1", "cpu": {"logical_cores": 4}}
    b = {"hostname": "b", "host_id": "b/boot2"}
    t = Topology.from_hosts([a, b, dict(a), dict(b), dict(a)])
    assert t.num_hosts == 2 and t.rank_hosts == [0, 1, 0, 1, 0]
    assert t.ranks_on_host(0) == [0, 2, 4] and t.ranks_on_host(1) == [1, 3]
    assert t.hosts[0]["cpu"]["logical_cores"] == 4
    # No host id: the host name decides; same name with another boot id is another host.
    t = Topology.from_hosts([{"hostname": "x"}, {"hostname": "x"}, {"hostname": "x", "host_id": "x/2"}])
    assert t.ranks_per_host == [2, 1]
    local = _C.detect_host_topology()
    assert Topology.from_hosts([local, local, local]).ranks_per_host == [3]


# ---- environment ----

def test_topo_file_env(monkeypatch, tmp_path):
    detected = Topology.local()
    monkeypatch.delenv("PLEXUS_TOPO_FILE", raising=False)
    assert topology_from_env_or(detected) is detected
    monkeypatch.setenv("PLEXUS_TOPO_FILE", "dgx-h100-2node.json")
    assert topology_from_env_or(detected).world_size == 16
    path = tmp_path / "mine.json"
    Topology.load("2host-4gpu-nvlink-400g").dump(path)
    monkeypatch.setenv("PLEXUS_TOPO_FILE", str(path))
    assert topology_from_env_or(detected).ranks_per_host == [4, 4]
    monkeypatch.setenv("PLEXUS_TOPO_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="PLEXUS_TOPO_FILE"):
        topology_from_env_or(detected)


def test_topo_dump_env(monkeypatch, tmp_path):
    t = Topology.load("dgx-h100-2node")
    monkeypatch.delenv("PLEXUS_TOPO_DUMP_FILE", raising=False)
    assert maybe_dump(t) is None
    path = tmp_path / "out.json"
    monkeypatch.setenv("PLEXUS_TOPO_DUMP_FILE", str(path))
    assert maybe_dump(t) == str(path)
    assert Topology.load(path) == t and json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind
