"""Several "hosts" on one machine: `hosts` network namespaces, each with a veth pair to one
bridge, at <net>.<i+1>/24; made on entering, removed on leaving (also when making them fails).
Used by tests/test_netns.py and bench/ucx_netns.py. Needs root and iproute2."""

from __future__ import annotations

import os
import subprocess


def sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


class Bed:
    """`prefix` names the namespaces, links and bridge (with this process's id, so that runs side
    by side do not meet); `subnet` is the third-from-last byte of 10.<subnet>.<k>.0/24."""

    def __init__(self, hosts: int, prefix: str = "plx", subnet: int = 213):
        self.tag = f"{os.getpid() % 10000}"
        self.names = [f"{prefix}{self.tag}n{i}" for i in range(hosts)]
        self.bridge = f"{prefix}{self.tag}br"
        self.net = f"10.{subnet}.{os.getpid() % 250}"

    def __enter__(self):
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "link", "set", self.bridge, "up")
            for i, ns in enumerate(self.names):
                sh("ip", "netns", "add", ns)
                inner, outer = f"{ns}i", f"{ns}o"
                sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
                sh("ip", "link", "set", inner, "netns", ns)
                sh("ip", "link", "set", outer, "master", self.bridge)
                sh("ip", "link", "set", outer, "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip(i)}/24", "dev", inner)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def ip(self, i: int) -> str:
        return f"{self.net}.{i + 1}"
