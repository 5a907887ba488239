#!/usr/bin/env python3
"""Malformed bytes never crash, hang or corrupt (issue 16): a fuzzer for the two parsers anyone can
reach over the network, the rendezvous store's protocol and the peer handshake, run against
live servers in this process (a crash ends the run; a hang fails the liveness check).

  store      TcpStoreServer: requests built from valid ones and broken (random command, key and
             value lengths up to 2^64, truncated, concatenated, pure noise); after every batch a
             real client must still set and get.
  handshake  two ranks of one communicator (threads of this process): hellos built from valid
             ones (magic, version, communicator id, ranks, secret) and broken, sent to both
             ranks' listeners; after every batch the two must still all-reduce correctly.

    python bench/fuzz.py --store 100000 --handshake 100000 [--seed 1]
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time
from typing import Callable, List

import numpy as np

from plexus import _C

MAX_KEY, MAX_VALUE = 1 << 16, 64 << 20  # the store's limits (bootstrap/tcp_store.cc)
HELLO = struct.Struct("<IHHQii32s")  # magic, version, reserved, comm id, from, to, secret


def _lengths(rng, limit: int) -> int:
    choice = rng.integers(6)
    if choice == 0:
        return int(rng.integers(0, 64))
    if choice == 1:
        return limit + int(rng.integers(0, 3)) - 1  # around the limit
    if choice == 2:
        return int(rng.integers(0, 2 ** 32))
    if choice == 3:
        return 2 ** 64 - 1 - int(rng.integers(0, 4))
    return int(rng.integers(0, 512))


def store_input(rng) -> bytes:
    """One connection's bytes: mostly requests, many of them broken."""
    out = b""
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(5)
        if kind == 0:
            out += rng.bytes(int(rng.integers(0, 300)))
            continue
        cmd = int(rng.integers(1, 4)) if kind < 3 else int(rng.integers(0, 256))
        key = rng.bytes(int(rng.integers(0, 40)))
        value = rng.bytes(int(rng.integers(0, 40)))
        klen = len(key) if kind != 4 else _lengths(rng, MAX_KEY) % 2 ** 32
        vlen = len(value) if kind == 1 else _lengths(rng, MAX_VALUE)
        msg = struct.pack("<BI", cmd, klen) + key + struct.pack("<Q", vlen % 2 ** 64) + value
        if rng.integers(3) == 0:
            msg = msg[:int(rng.integers(0, len(msg) + 1))]  # cut short
        out += msg
    return out


def hello_input(rng, comm_id: int, size: int) -> bytes:
    """A hello built from a valid one with some fields broken, or noise."""
    if rng.integers(8) == 0:
        return rng.bytes(int(rng.integers(0, 200)))
    magic = 0x504C5848 if rng.integers(4) else int(rng.integers(0, 2 ** 32))
    version = 1 if rng.integers(4) else int(rng.integers(0, 2 ** 16))
    cid = comm_id if rng.integers(3) else int(rng.integers(0, 2 ** 63))
    frm = int(rng.integers(-2, size + 2)) if rng.integers(2) else int(rng.integers(-2 ** 31, 2 ** 31))
    to = int(rng.integers(-2, size + 2))
    msg = HELLO.pack(magic, version, 0, cid, frm, to, rng.bytes(32))  # the secret is never guessed
    if rng.integers(3) == 0:
        msg = msg[:int(rng.integers(0, len(msg) + 1))]
    return msg + (rng.bytes(int(rng.integers(0, 64))) if rng.integers(4) == 0 else b"")


def _send(port: int, data: bytes, linger: bool) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            if linger:  # sometimes wait for an answer (or the close) before leaving
                s.settimeout(0.05)
                try:
                    s.recv(64)
                except OSError:
                    pass
    except OSError:
        pass  # refused or reset: the server's right


def fuzz_store(count: int, seed: int, report: Callable[[str], None] = print) -> int:
    server = _C.TcpStoreServer("127.0.0.1", 0)
    client = _C.TcpStoreClient("127.0.0.1", server.port, 10.0)
    rng = np.random.default_rng(seed)
    for i in range(count):
        _send(server.port, store_input(rng), linger=rng.integers(50) == 0)
        if (i + 1) % max(1, count // 20) == 0 or i + 1 == count:
            key = f"alive/{i}"
            client.set(key, str(i).encode())
            assert bytes(client.get(key, 5.0)) == str(i).encode(), "the store answered wrongly"
            report(f"store: {i + 1} inputs, still serving")
    return count


def _two_ranks(timeout: float):
    server = _C.TcpStoreServer("127.0.0.1", 0)
    comms: List = [None, None]

    def join(r: int) -> None:
        store = _C.PrefixStore(_C.TcpStoreClient("127.0.0.1", server.port, timeout), "fuzz/")
        comms[r] = _C.Communicator(store, r, 2, timeout)

    threads = [threading.Thread(target=join, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return server, comms


def _all_reduce_works(comms) -> bool:
    bufs = [np.full(1000, r + 1.0, np.float32) for r in range(2)]
    codes = _C.DTYPES.index("float32"), _C.OPS.index("sum")
    works = [comms[r].all_reduce(bufs[r].ctypes.data, bufs[r].ctypes.data, 1000, codes[0], codes[1], 1.0, False)
             for r in range(2)]
    for w in works:
        w.wait(30.0)
    return all((b == 3.0).all() for b in bufs)


def fuzz_handshake(count: int, seed: int, report: Callable[[str], None] = print) -> int:
    server, comms = _two_ranks(60.0)
    ports = [p for c in comms for p in c.listen_ports if p]
    rng = np.random.default_rng(seed)
    for i in range(count):
        _send(ports[int(rng.integers(len(ports)))], hello_input(rng, comms[0].id, 2), linger=rng.integers(50) == 0)
        if (i + 1) % max(1, count // 20) == 0 or i + 1 == count:
            assert _all_reduce_works(comms), "the ranks' all_reduce went wrong"
            report(f"handshake: {i + 1} inputs, the ranks still all-reduce")
    for c in comms:
        c.abort("fuzzing done")
    del server
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=int, default=100000)
    p.add_argument("--handshake", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    t0 = time.monotonic()
    fuzz_store(args.store, args.seed)
    t1 = time.monotonic()
    fuzz_handshake(args.handshake, args.seed)
    t2 = time.monotonic()
    print(f"fuzz: {args.store} store inputs in {t1 - t0:.0f} s, {args.handshake} handshakes in {t2 - t1:.0f} s; "
          "no crash, no hang, every liveness check passed")


if __name__ == "__main__":
    main()
