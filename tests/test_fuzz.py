"""A short run of bench/fuzz.py (the bench runs 10^5 inputs each): broken store requests, broken
peer hellos and broken collective frames against live servers and ranks of this process; no
crash, no hang, the store still serves and the ranks still all-reduce after every batch, and a
rank takes a frame's payload only when its header is valid (and always then)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import fuzz  # noqa: E402


def test_the_store_survives_broken_requests():
    assert fuzz.fuzz_store(2000, seed=11, report=lambda line: None) == 2000


def test_the_ranks_survive_broken_hellos():
    assert fuzz.fuzz_handshake(2000, seed=12, report=lambda line: None) == 2000


def test_a_rank_survives_broken_frames():
    assert fuzz.fuzz_frames(1000, seed=13, report=lambda line: None) == 1000


def test_inputs_are_broken_in_many_ways():
    import numpy as np

    rng = np.random.default_rng(3)
    stores = [fuzz.store_input(rng) for _ in range(200)]
    hellos = [fuzz.hello_input(rng, 42, 2) for _ in range(200)]
    assert len({len(s) for s in stores}) > 50 and len({len(h) for h in hellos}) > 20
    assert any(len(h) == fuzz.HELLO.size and h[:4] == fuzz.HELLO.pack(0x504C5848, 1, 0, 42, 0, 1, bytes(32))[:4]
               for h in hellos)  # some hellos are well-formed but for the secret
    frames = [fuzz.frame_input(rng, 7, 10, p2p=bool(i % 2)) for i in range(200)]
    valid = sum(v for _, v, _ in frames)
    assert 20 < valid < 120  # both kinds, plenty of each
    assert len({d[:fuzz.FRAME.size] for d, _, _ in frames}) > 100
