"""Many mixed calls leak nothing: resident memory, open descriptors and /dev/shm entries stay flat
after warm-up (a short run of bench/load.py's job; the bench runs 4 ranks x 100 000 calls)."""

from __future__ import annotations

import os
import sys

from launch import run_ranks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import load  # noqa: E402


def test_memory_descriptors_and_shm_stay_flat():
    # Warm-up (pages of buffers touched the first time) ends by about call 6000 here.
    results = run_ranks(3, load._rank, 14000, {7000, 14000}, timeout=600)
    for rank, points in enumerate(results):
        (rss0, fds0, shm0), (rss1, fds1, shm1) = points[7000], points[14000]
        assert rss1 - rss0 < 1.0, f"rank {rank}: resident memory grew {rss1 - rss0:.1f} MiB in 7000 calls"
        assert fds1 == fds0, f"rank {rank}: {fds0} -> {fds1} open descriptors"
        assert shm1 == shm0 == 0, f"rank {rank}: /dev/shm holds {shm1} plexus entries"
