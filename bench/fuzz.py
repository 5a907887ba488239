#!/usr/bin/env python3
"""Malformed bytes never crash, hang or corrupt (issue 16): a fuzzer for the parsers that read the
network, the rendezvous store's protocol, the peer handshake and the collective frames, run
against live servers in this process (a crash ends the run; a hang fails the liveness check).

  store      TcpStoreServer: requests built from valid ones and broken (random command, key and
             value lengths up to 2^64, truncated, concatenated, pure noise); after every batch a
             real client must still set and get.
  handshake  two ranks of one communicator (threads of this process): hellos built from valid
             ones (magic, version, communicator id, ranks, secret) and broken, sent to both
             ranks' listeners; after every batch the two must still all-reduce correctly.
  frames     a real rank 0 and a rank 1 played here (it joins the rendezvous, answers the
             handshake), which sends rank 0 the frame of a broadcast from rank 1, or of a
             point-to-point message: valid, or with fields broken (magic, version, type,
             signature, tag, sequence, communicator id, lengths up to 2^64, an error frame),
             cut short, or followed by noise; then the stream ends (or, rarely, stays open and
             silent). Rank 0 must raise a PlexusError (a ValueError for a message of another
             size or dtype) or, only when the header was valid, end with exactly the payload
             sent; a valid frame must succeed. One fresh communicator per input.

    python bench/fuzz.py --store 100000 --handshake 100000 --frames 100000 [--seed 1]
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
# magic, version, type, kind, dtype, op, reserved, root, reserved2, comm id, seq, count, payload bytes
FRAME = struct.Struct("<IHBBBBHiIQQQQ")
FRAME_BITS = [32, 16, 8, 8, 8, 8, 16, 32, 32, 64, 64, 64, 64]
FRAME_MAGIC, DATA, ERROR, P2P, BROADCAST, NO_OP = 0x504C5846, 1, 2, 3, 3, 9  # transport/frame.h, base/types.h
TAG = 5
# The header fields each parser checks (the others are not read): core/exchange.cc, core/p2p.cc.
DATA_CHECKED = (0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12)
P2P_CHECKED = (0, 1, 2, 4, 7, 9, 12)


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


def frame_input(rng, comm_id: int, count: int, p2p: bool = False):
    """The bytes rank 1 sends for broadcast(count float32, root=1) #1, or for a send(count
    float32, tag 5) to rank 0 when `p2p`, and whether its header is valid (then rank 0 must end
    with exactly its payload)."""
    kind, checked = (P2P, P2P_CHECKED) if p2p else (DATA, DATA_CHECKED)
    fields = [FRAME_MAGIC, 1, kind, 9 if p2p else BROADCAST, _C.DTYPES.index("float32"), NO_OP, 0, TAG if p2p else 1,
              0, comm_id, 1, count, 4 * count]
    good = list(fields)
    if rng.integers(4):
        for _ in range(int(rng.integers(1, 3))):
            i = int(rng.integers(len(fields)))
            if i == 12:
                fields[i] = _lengths(rng, 4 * count)
            elif i == 2:
                fields[i] = ERROR if rng.integers(3) == 0 else int(rng.integers(0, 256))
            elif rng.integers(2):
                fields[i] += int(rng.integers(-2, 3))  # near the valid value
            else:
                fields[i] = int(rng.integers(0, 2 ** 63))
            fields[i] %= 2 ** FRAME_BITS[i]
            if i == 7 and fields[i] >= 2 ** 31:  # root (the tag) is signed
                fields[i] -= 2 ** 32
    valid = all(fields[i] == good[i] for i in checked)  # fields no check reads leave it valid
    payload = rng.bytes(4 * count)
    data = FRAME.pack(*fields) + payload
    if rng.integers(8) == 0:  # cut short
        data = data[:int(rng.integers(0, len(data)))]
        valid = False
    elif rng.integers(8) == 0:  # noise after it
        data += rng.bytes(int(rng.integers(1, 100)))
    return data, valid, payload


class _FakeRank1:
    """Rank 1 of a 2-rank TCP communicator, played by hand: it joins the rendezvous (the store
    keys of bootstrap/rendezvous.cc) with its own listeners and answers rank 0's handshake."""

    def __init__(self, store, timeout: float):
        self.listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # channels
        ports = ",".join(str(s.getsockname()[1]) for s in self.listeners)
        store.add("rank_claim/1", 1)
        self.comm_id = struct.unpack("<Q", bytes(store.get("identity", timeout))[:8])[0]
        store.set("endpoint/1", f"1|tcp=127.0.0.1:{ports}|fuzz-rank-1".encode())
        store.set("barrier_in/ready/1", b"1")
        if store.add("barrier/ready", 1) == 2:
            store.set("barrier_done/ready", b"1")
        store.get("barrier_done/ready", timeout)
        store.set("barrier_out/ready/1", b"1")
        if store.add("barrier_left/ready", 1) == 2:
            store.set("barrier_all_left/ready", b"1")

    def accept(self, channel: int, timeout: float) -> socket.socket:
        """Rank 0's stream of a channel (0: collectives, 1: point-to-point), its hello answered."""
        self.listeners[channel].settimeout(timeout)
        conn, _ = self.listeners[channel].accept()
        conn.settimeout(timeout)
        hello = b""
        while len(hello) < HELLO.size:
            chunk = conn.recv(HELLO.size - len(hello))
            if not chunk:
                raise OSError("rank 0 closed before its hello")
            hello += chunk
        conn.sendall(struct.pack("<II", 0x504C5841, 0))  # the Ack
        return conn

    def close(self) -> None:
        for s in self.listeners:
            s.close()


def fuzz_frames(count: int, seed: int, report: Callable[[str], None] = print) -> int:
    import os
    import tempfile

    saved = {k: os.environ.get(k) for k in ("PLEXUS_TRANSPORTS", "PLEXUS_TRACE_DIR", "PLEXUS_AUTH_TOKEN", "PLEXUS_AUTH_FILE")}
    os.environ["PLEXUS_TRANSPORTS"] = "tcp"
    os.environ.pop("PLEXUS_AUTH_TOKEN", None)  # the rank played here speaks the unauthenticated handshake
    os.environ.pop("PLEXUS_AUTH_FILE", None)
    dumps = tempfile.TemporaryDirectory(prefix="plexus-fuzz-")
    os.environ["PLEXUS_TRACE_DIR"] = dumps.name  # every failed input dumps its flight recorder
    server = _C.TcpStoreServer("127.0.0.1", 0)
    # One client each: a client serves one request at a time, and rank 0 waits in one.
    clients = [_C.TcpStoreClient("127.0.0.1", server.port, 30.0) for _ in range(2)]
    rng = np.random.default_rng(seed)
    outcomes = {"correct": 0, "refused": 0}
    try:
        for i in range(count):
            n = int(rng.integers(1, 300))
            p2p = bool(rng.integers(2))
            data, valid, payload = frame_input(rng, 0, n, p2p)  # comm id patched in below
            store, fake_store = (_C.PrefixStore(c, f"frames/{i}/") for c in clients)
            result = {}

            def rank0() -> None:
                try:
                    comm = _C.Communicator(store, 0, 2, 2.0)
                    result["comm"] = comm
                    buf = np.zeros(n, np.float32)
                    result["buf"] = buf
                    f32 = _C.DTYPES.index("float32")
                    if p2p:
                        comm.recv(buf.ctypes.data, n, f32, 1, TAG).wait(30.0)
                    else:
                        comm.broadcast(buf.ctypes.data, n, f32, 1, False).wait(30.0)
                    result["ok"] = True
                except _C.PlexusError as e:
                    result["error"] = e
                except ValueError as e:  # documented for a message of another size or dtype, nothing else
                    assert p2p and str(e).startswith(f"recv of {4 * n} bytes of float32 with tag {TAG}: rank 1 sent "), e
                    result["error"] = e

            t = threading.Thread(target=rank0)
            t.start()
            fake = _FakeRank1(fake_store, 30.0)
            try:
                conn = fake.accept(1 if p2p else 0, 30.0)
                head = FRAME.unpack(data[:FRAME.size]) if len(data) >= FRAME.size else None
                if head is not None and head[9] == 0:  # the valid comm id, unless the input broke it
                    data = FRAME.pack(*head[:9], fake.comm_id, *head[10:]) + data[FRAME.size:]
                silent = rng.integers(500) == 0  # stay open and silent: rank 0 waits out its 2 s timeout
                try:
                    conn.sendall(data)
                    if not silent:
                        conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # rank 0 refused the frame and closed the stream already
                t.join(30.0)
                conn.close()
            finally:
                fake.close()
            assert not t.is_alive(), f"input {i}: rank 0 hangs"
            if "ok" in result:
                assert valid, f"input {i}: rank 0 took a frame whose header is broken"
                assert bytes(result["buf"].tobytes()) == payload, f"input {i}: rank 0 ended with other bytes"
                outcomes["correct"] += 1
            else:
                assert "error" in result, f"input {i}: rank 0 neither finished nor raised"
                assert not valid, f"input {i}: a valid frame failed: {result['error']}"
                outcomes["refused"] += 1
            if "comm" in result:
                result["comm"].abort("fuzzing")
            if (i + 1) % max(1, count // 20) == 0 or i + 1 == count:
                report(f"frames: {i + 1} inputs, {outcomes['correct']} valid ones delivered exactly, "
                       f"{outcomes['refused']} broken ones refused with an exception")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        dumps.cleanup()
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=int, default=100000)
    p.add_argument("--handshake", type=int, default=100000)
    p.add_argument("--frames", type=int, default=100000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    t0 = time.monotonic()
    fuzz_store(args.store, args.seed)
    t1 = time.monotonic()
    fuzz_handshake(args.handshake, args.seed)
    t2 = time.monotonic()
    fuzz_frames(args.frames, args.seed)
    t3 = time.monotonic()
    print(f"fuzz: {args.store} store inputs in {t1 - t0:.0f} s, {args.handshake} handshakes in {t2 - t1:.0f} s, "
          f"{args.frames} frames in {t3 - t2:.0f} s; no crash, no hang, every liveness check passed")


if __name__ == "__main__":
    main()
