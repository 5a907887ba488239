"""Topology.describe(): a human-readable summary for `plexus info` and logs."""

import json

_LINK_CELL = {"self": "X", "p2p": "P2P", "pcie": "PCI"}


def ranges(numbers):
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, run = [], []
    for n in sorted(numbers):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _gbps(x):
    return f"{x:g} Gb/s" if x else "speed unknown"


def _hardware(host):
    """What makes two hosts alike: everything but names, ranks and addresses."""
    h = {k: v for k, v in host.items() if k not in ("hostname", "host_id", "ranks")}
    h["nics"] = [{k: v for k, v in n.items() if k != "ipv4"} for n in host["nics"]]
    return json.dumps(h, sort_keys=True)


def _link_matrix(host):
    """Like `nvidia-smi topo -m`: X, NV<links>, P2P or PCI."""
    n = len(host["gpus"])
    cells = [[_LINK_CELL.get(host["gpu_links"][a][b]) or f"NV{host['nvlinks'][a][b] or ''}" for b in range(n)]
             for a in range(n)]
    width = max(len(c) for row in cells for c in row) + 2
    width = max(width, len(f"GPU{n - 1}") + 2)
    lines = ["  links   " + "".join(f"GPU{b}".rjust(width) for b in range(n))]
    for a in range(n):
        lines.append(f"    GPU{a}".ljust(10) + "".join(c.rjust(width) for c in cells[a]))
    return lines


def _host_lines(topo, i, host):
    cpu = host["cpu"]
    lines = [f"  cpu     {cpu['model'] or 'unknown model'}: {cpu['physical_cores']} cores, "
             f"{cpu['logical_cores']} threads; {host['memory_mib']} MiB memory"]
    for node in host["numa"]:
        lines.append(f"  numa {node['id']:<3}cpus {node['cpus'] or '?'}, {node['memory_mib']} MiB")
    if not host["gpus"]:
        lines.append("  gpus    none")
    for g in host["gpus"]:
        numa = f", numa {g['numa_node']}" if g["numa_node"] >= 0 else ""
        lines.append(f"  gpu {g['index']:<4}{g['name'] or 'unknown'} ({g['pci_bus_id'] or 'no bus id'}, "
                     f"{g['memory_mib']} MiB{numa})")
    if len(host["gpus"]) > 1:
        lines += _link_matrix(host)
    for n in host["nics"]:
        speed = _gbps(n["speed_mbps"] / 1000) if n["speed_mbps"] else "speed unknown"
        extra = "".join([f", {n['ipv4']}" if n["ipv4"] else "", ", virtual" if n["virtual"] else ""])
        lines.append(f"  nic     {n['name']} {n['operstate'] or '?'}, {speed}{extra}")
    for p in host["ib"]:
        netdev = f", {p['netdev']}" if p["netdev"] else ""
        lines.append(f"  ib      {p['device']}/{p['port']} {p['state']}, {_gbps(p['rate_gbps'])}, "
                     f"{p['link_layer'] or '?'}{netdev}")
    if not host["nics"] and not host["ib"]:
        lines.append("  nics    none")
    lines.append(f"  network fastest {_gbps(topo.host_nic_gbps(i))}, all ports {_gbps(topo.host_nic_total_gbps(i))}")
    return lines


def describe(topo):
    per = sorted(set(topo.ranks_per_host))
    per_text = f"{per[0]} per host" if len(per) == 1 else "ranks per host " + str(topo.ranks_per_host)
    lines = [f"topology: {topo.num_hosts} host(s), {topo.world_size} rank(s), {per_text}"]
    seen = {}
    for i, host in enumerate(topo.hosts):
        head = f"host {i}: {host['hostname']}, ranks {ranges(host['ranks'])}"
        key = _hardware(host)
        if key in seen:
            lines.append(f"{head}: same hardware as host {seen[key]}")
            continue
        seen[key] = i
        lines.append(head)
        lines += _host_lines(topo, i, host)
    return "\n".join(lines)
