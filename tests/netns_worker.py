"""One rank of the network-namespace test bed (tests/test_netns.py), started with
`ip netns exec <ns> python netns_worker.py TASK`: joins the group through env:// and prints
one JSON line with its result."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import plexus  # noqa: E402


def task_collectives(rank, world):
    import test_algorithms

    checked = {c: test_algorithms.check(rank, world, c) for c in
               ["all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "barrier"]}
    comm = plexus.distributed._state.world.comm
    transports = [comm.transport_to(p) if p != rank else "self" for p in range(world)]
    return {"checked": checked, "transports": transports, "choice_1m": plexus.explain("all_reduce", 1 << 20).chosen}


def task_time_allreduce(rank, world):
    nbytes = int(os.environ.get("NETNS_BYTES", "4096"))
    iters = int(os.environ.get("NETNS_ITERS", "20"))
    x = np.ones(nbytes // 4, dtype=np.float32)
    plexus.all_reduce(x)
    plexus.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        plexus.all_reduce(x)
    seconds = (time.perf_counter() - start) / iters
    return {"seconds": seconds, "chosen": plexus.explain("all_reduce", nbytes).chosen}


def task_calibrate(rank, world):
    from plexus.bench.calibrate import calibrate

    lines = calibrate(iters=20)
    if lines is not None:
        with open(os.environ["NETNS_OUT"], "w") as f:
            f.write("\n".join(lines) + "\n")
    return {"lines": lines}


def main():
    task = sys.argv[1]
    plexus.init_process_group(init_method="env://", timeout=120)
    rank, world = plexus.get_rank(), plexus.get_world_size()
    result = globals()[f"task_{task}"](rank, world)
    plexus.barrier()
    print(json.dumps({"rank": rank, **result}), flush=True)
    plexus.destroy_process_group()


if __name__ == "__main__":
    main()
