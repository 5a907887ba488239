"""Strangers at the door never stall a job: while ranks run collectives and point-to-point
messages (and dial each other for the first time), every port they listen on, and the
rendezvous store's, holds idle connections, connections that trickle a byte at a time, and connections that send garbage or a
hello with a huge length. Before, one idle connection held a rank's progress thread for 5 s (its
handshake was read while the communicator's lock was held) and a few of them made the job time
out; now handshakes are read without blocking, each with its own deadline, and the oldest go
first when too many wait. The group's timeout here is short, so a stall fails the test; no time
is measured (bench/strangers.py compares times)."""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest

import plexus
from launch import run_ranks
from plexus.bench.launch import free_port

TRANSPORTS = {"default": {}, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}


class Strangers:
    """Connections to `ports` that keep them busy until stop(): idle, trickling (a byte every
    0.2 s), garbage, and a hello-sized message claiming a huge length."""

    def __init__(self, ports, idle=24, trickle=8, garbage=8):
        self.ports, self.stopping, self.socks = [p for p in ports if p], threading.Event(), []
        self.counts = dict(idle=idle, trickle=trickle, garbage=garbage)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self, port):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return None
        self.socks.append(s)
        return s

    def _run(self):
        rng = np.random.default_rng(7)
        trickling = []
        for port in self.ports:
            for _ in range(self.counts["idle"]):
                self._open(port)
            for _ in range(self.counts["garbage"]):
                s = self._open(port)
                if s is not None:
                    try:
                        s.sendall(rng.bytes(int(rng.integers(1, 200))))
                        s.sendall(struct.pack("<IHHQ", 0xFFFFFFFF, 0xFFFF, 0, 2 ** 63))
                    except OSError:
                        pass
            trickling += [s for s in (self._open(port) for _ in range(self.counts["trickle"])) if s is not None]
        while not self.stopping.wait(0.2):
            for s in trickling:
                try:
                    s.send(b"P")
                except OSError:
                    pass

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        for s in self.socks:
            s.close()


def _job_under_strangers(rank, world, store_port):
    # Every port this rank listens on, and the rendezvous store's (rank 0 serves it).
    strangers = Strangers(plexus.distributed._state.world.comm.listen_ports + [store_port])
    time.sleep(0.5)  # let them settle in the queues first
    try:
        sums = []
        for i in range(40):
            x = np.full(1 + 997 * (i % 5), rank + 1.0 + i, np.float32)
            plexus.all_reduce(x)
            sums.append(float(x[0]))
        peer = (rank + 1) % world
        got = np.zeros(1000, np.int64)
        w = plexus.irecv(got, src=(rank - 1) % world, tag=3)
        plexus.send(np.full(1000, rank, np.int64), dst=peer, tag=3)
        w.wait()
        assert (got == (rank - 1) % world).all()
        g = plexus.new_group(list(range(world)))  # a new communicator: new listeners, new dials
        y = np.ones(4096, np.float64)
        plexus.all_reduce(y, group=g)
        assert (y == world).all()
    finally:
        strangers.stop()
    return sums


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_strangers_never_stall_the_job(transport):
    world = 3
    env = dict(TRANSPORTS[transport], PLEXUS_TIMEOUT="20")
    port = free_port()
    results = run_ranks(world, _job_under_strangers, port, env=env, timeout=240,
                        init_method=f"tcp://127.0.0.1:{port}")
    want = [world * (world + 1) / 2 + world * i for i in range(40)]
    assert all(r == want for r in results), results
