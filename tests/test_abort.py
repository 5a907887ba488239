"""plexus.abort(), as ncclCommAbort: called from another thread, it makes the call blocked on the
group raise on this rank at once (not at the group's timeout), later calls raise too, and the
peers' calls with this rank fail naming it; over shared memory and over TCP."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import plexus
from launch import run_ranks

TRANSPORTS = {"default": {}, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}
TIMEOUT = 60  # the group's: an abort that waited for it would fail the bound below


def _abort_while_blocked(rank, world):
    plexus.barrier()
    x = np.ones(1000, np.float32)
    if rank == 2:  # never joins: ranks 0 and 1 block in the all_reduce
        time.sleep(3)
        return "absent"
    outcome = {}

    def call():
        t0 = time.monotonic()
        try:
            plexus.all_reduce(x)
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - the point
            outcome["error"] = e
        outcome["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    if rank == 1:
        plexus.abort()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"rank {rank}: the blocked call did not return"
    e = outcome["error"]
    assert isinstance(e, plexus.PlexusError), (rank, e)
    assert outcome["seconds"] < TIMEOUT / 4, (rank, outcome["seconds"], e)
    if rank == 1:
        assert "plexus.abort() was called on rank 1" in str(e), e
        with pytest.raises(plexus.PlexusError, match="abort"):
            plexus.all_reduce(x)  # and every later call
    else:
        assert "rank 1" in str(e), e  # the peer is named
    # Printed by `pytest -s tests/test_abort.py`: the call started 0.5 s before rank 1's abort.
    return f"{type(e).__name__} after {outcome['seconds'] - 0.5:+.4f} s from the abort"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_abort_unblocks_this_rank_and_names_it_to_the_peers(transport):
    env = dict(TRANSPORTS[transport], PLEXUS_TIMEOUT=str(TIMEOUT))
    results = run_ranks(3, _abort_while_blocked, env=env, timeout=TIMEOUT + 60)
    print(results)
    assert results[2] == "absent"
