"""Point-to-point messages: send/recv/isend/irecv with tags, matching in order per (peer, tag),
receives from any source, both orders of posting (as batch_isend_irecv does), sizes from 0 to
several chunks, over shared memory and over TCP, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
from launch import run_ranks

TRANSPORTS = {"default": {}, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}


def ring_exchange(rank, world):
    """Everyone posts its receive first, then its send (deadlocks if sends wait for receivers
    or if point-to-point queued behind itself)."""
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    for count in [0, 1, 1000, 3 * 2**18 + 5]:
        out = np.full(count, rank, dtype=np.int64)
        got = np.zeros(count, dtype=np.int64)
        r = plexus.irecv(got, src=prv)
        s = plexus.isend(out, dst=nxt)
        r.wait()
        s.wait()
        assert np.array_equal(got, np.full(count, prv)), count
        assert r.source == prv
    return True


def tags_match_in_order(rank, world):
    """Rank 0 sends tag 7 then tag 3 (twice each); rank 1 receives tag 3 first. Each tag keeps
    its own order; messages that arrive early wait for their receive."""
    if rank == 0:
        for tag, value in [(7, 70), (3, 30), (7, 71), (3, 31)]:
            plexus.send(np.full(5, value, dtype=np.float32), dst=1, tag=tag)
        return None
    seen = []
    for tag in [3, 3, 7, 7]:
        x = np.zeros(5, dtype=np.float32)
        assert plexus.recv(x, src=0, tag=tag) == 0
        seen.append(int(x[0]))
    return seen


def _senders_received_from_any_source(world):
    """Rank 0 receives one message (rank * 10, tag 5) from each other rank, from any source."""
    senders = set()
    for _ in range(world - 1):
        x = np.zeros(1, dtype=np.int32)
        src = plexus.recv(x, tag=5)
        assert x[0] == src * 10
        senders.add(src)
    return sorted(senders)


def any_source(rank, world):
    if rank != 0:
        plexus.send(np.array([rank * 10], dtype=np.int32), dst=0, tag=5)
        return None
    return _senders_received_from_any_source(world)


def send_then_leave(rank, world):
    """Ranks 1.. send, then destroy their group at once; rank 0 receives from any source only
    after they left. What they sent still arrives (their leaving is not an error for a receive
    another rank can meet); a receive from a rank that left fails at once, naming it."""
    import time

    if rank != 0:
        plexus.send(np.array([rank * 10], dtype=np.int32), dst=0, tag=5)
        plexus.destroy_process_group()
        time.sleep(2.0)  # still alive while rank 0 receives: its leaving, not its death, is seen
        return None
    time.sleep(1.0)
    senders = _senders_received_from_any_source(world)
    start = time.monotonic()
    try:
        plexus.recv(np.zeros(1, dtype=np.int32), src=1, tag=5)
        error = "no error"
    except plexus.PeerError as e:
        error = str(e)
    return senders, error, time.monotonic() - start


def read_early_then_leave(rank, world):
    """Rank 0 has a receive from any source (tag 9) open, so it reads rank 1's tag-6 message as
    it comes; rank 1 then leaves. A receive of that message posted afterwards still gets it."""
    import time

    if rank == 1:
        plexus.send(np.arange(4, dtype=np.int32), dst=0, tag=6)
        plexus.destroy_process_group()
        time.sleep(2.0)
        return None
    pending = plexus.irecv(np.zeros(1, dtype=np.int32), tag=9)  # never met; keeps rank 0 reading
    time.sleep(1.0)
    x = np.zeros(4, dtype=np.int32)
    plexus.recv(x, src=1, tag=6)
    del pending
    return x.tolist()


def size_mismatch(rank, world):
    if rank == 0:
        plexus.send(np.zeros(10, dtype=np.float32), dst=1)
        return "sent"
    try:
        plexus.recv(np.zeros(12, dtype=np.float32), src=0)
    except ValueError as e:
        return str(e)
    return "no error"


def p2p_between_collectives(rank, world):
    """Point-to-point and collectives interleave freely."""
    x = np.ones(100, dtype=np.float32)
    got = np.zeros(100, dtype=np.float32)
    r = plexus.irecv(got, src=(rank - 1) % world)
    plexus.all_reduce(x)
    plexus.send(x, dst=(rank + 1) % world)
    r.wait()
    plexus.barrier()
    return float(got[0])


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("world", [2, 3])
def test_ring_exchange_receive_posted_first(world, transport):
    assert all(run_ranks(world, ring_exchange, env=TRANSPORTS[transport]))


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_tags_match_in_order_per_peer_and_tag(transport):
    assert run_ranks(2, tags_match_in_order, env=TRANSPORTS[transport])[1] == [30, 31, 70, 71]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_receive_from_any_source(transport):
    assert run_ranks(4, any_source, env=TRANSPORTS[transport])[0] == [1, 2, 3]


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_messages_sent_before_leaving_arrive(transport):
    senders, error, seconds = run_ranks(4, send_then_leave, env=TRANSPORTS[transport])[0]
    assert senders == [1, 2, 3]
    assert "rank 1" in error, error
    assert seconds < 30, seconds  # not the 300 s timeout


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_a_message_read_before_its_sender_left_is_still_received(transport):
    assert run_ranks(2, read_early_then_leave, env=TRANSPORTS[transport])[0] == [0, 1, 2, 3]


def test_size_mismatch_is_an_error_naming_both_sides():
    msg = run_ranks(2, size_mismatch)[1]
    assert "40 bytes" in msg and "48 bytes" in msg and "rank 0" in msg, msg


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_point_to_point_between_collectives(transport):
    assert run_ranks(3, p2p_between_collectives, env=TRANSPORTS[transport]) == [3.0, 3.0, 3.0]


def bad_peers(rank, world):
    errors = []
    for call in (lambda: plexus.send(np.zeros(1), dst=rank), lambda: plexus.send(np.zeros(1), dst=world),
                 lambda: plexus.recv(np.zeros(1), src=world + 3)):
        try:
            call()
            errors.append("no error")
        except ValueError as e:
            errors.append(str(e))
    return errors


def test_bad_peers_are_value_errors():
    for msg in run_ranks(2, bad_peers)[0]:
        assert "rank" in msg and "no error" not in msg, msg
