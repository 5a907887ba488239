"""A userspace stand-in for `tc qdisc ... netem delay`, for kernels built without sch_netem.

    python delay_router.py DELAY_MS NET NS0 NS1 ...

gives network namespace NSi a TUN interface with address NET.<i+1>/24 and forwards every IPv4
packet between them DELAY_MS later (one way), in order. It prints "ready" once the interfaces
are up and runs until its stdin closes. Linux only, root only (TUN devices, setns)."""

from __future__ import annotations

import collections
import ctypes
import fcntl
import os
import select
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def open_tun_in(netns: str, name: str) -> int:
    """A TUN device created inside `netns` (the device lives there, the fd stays with us)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)
    return fd


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def main() -> None:
    delay = float(sys.argv[1]) / 1e3
    net, names = sys.argv[2], sys.argv[3:]
    fd_of_ip = {}
    fds = []
    for i, ns in enumerate(names):
        dev = f"plxt{i}"
        fd = open_tun_in(ns, dev)
        ip = f"{net}.{i + 1}"
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        fd_of_ip[bytes(int(b) for b in ip.split("."))] = fd
        fds.append(fd)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    # A constant delay keeps packets in order: one FIFO of (due time, fd, packet) suffices.
    queue: collections.deque = collections.deque()
    while not stop.is_set():
        wait = 0.05 if not queue else max(0.0, queue[0][0] - time.monotonic())
        readable, _, _ = select.select(fds, [], [], wait)
        now = time.monotonic()
        for fd in readable:
            packet = os.read(fd, 65536)
            out = fd_of_ip.get(packet[16:20]) if packet[:1] and packet[0] >> 4 == 4 else None
            if out is not None:
                queue.append((now + delay, out, packet))
        while queue and queue[0][0] <= now:
            _, out, packet = queue.popleft()
            try:
                os.write(out, packet)
            except OSError:
                pass  # the receiving side's queue is full: a dropped packet, as on a wire


if __name__ == "__main__":
    main()
