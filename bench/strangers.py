#!/usr/bin/env python3
"""Collectives' time with strangers at every port the ranks listen on, beside the same without
(issue 16: strangers never stall a job). Each round runs both phases, calm and with idle,
trickling and garbage connections open (tests/test_strangers.py's Strangers), in alternating
order; medians and spread per phase.

    python bench/strangers.py --np 3 --calls 300 --rounds 5 [--tcp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _rank(rank, world, calls, rounds):
    import numpy as np

    import plexus
    from test_strangers import Strangers

    comm = plexus.distributed._state.world.comm
    x = np.ones(1 << 14, np.float32)
    times = {"calm": [], "strangers": []}
    for rnd in range(rounds):
        for phase in (("calm", "strangers") if rnd % 2 == 0 else ("strangers", "calm")):  # no order bias
            strangers = Strangers(comm.listen_ports) if phase == "strangers" else None
            if strangers:
                time.sleep(0.5)
            plexus.barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                plexus.all_reduce(x)
            times[phase].append((time.perf_counter() - t0) / calls * 1e6)
            if strangers:
                strangers.stop()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--np", type=int, default=3)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tcp", action="store_true", help="PLEXUS_TRANSPORTS=tcp (else shared memory between the ranks)")
    args = p.parse_args()
    from launch import run_ranks

    env = {"PLEXUS_TRANSPORTS": "tcp"} if args.tcp else {}
    res = run_ranks(args.np, _rank, args.calls, args.rounds, env=env, timeout=600)
    print(f"all_reduce of 64 KiB, {args.np} ranks, {'tcp' if args.tcp else 'default transports'}, "
          f"{args.rounds} rounds x {args.calls} calls (slowest rank per round)")
    med = {}
    for phase in ("calm", "strangers"):
        per_round = [max(r[phase][i] for r in res) for i in range(args.rounds)]
        med[phase] = statistics.median(per_round)
        print(f"  {phase:10s} median {med[phase]:8.1f} us per call (min {min(per_round):.1f}, max {max(per_round):.1f})")
    print(f"  strangers / calm = {med['strangers'] / med['calm']:.2f}")


if __name__ == "__main__":
    main()
