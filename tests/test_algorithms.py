"""Every registered algorithm, forced through PLEXUS_ALGO, against numpy on 1-5 ranks (odd and
non-power-of-two sizes included), over a compact set of dtypes, ops and uneven counts."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
import reference as ref
from launch import run_ranks

COUNTS = [0, 1, 7, 1000, 70001]
CASES = [("float32", "SUM"), ("bfloat16", "AVG"), ("int64", "MAX"), ("float64", "PREMUL_SUM"), ("uint8", "BXOR")]
WORLDS = [1, 2, 3, 4, 5]
# Small chunks: every algorithm pipelines several chunks per step at these counts.
SMALL_CHUNKS = {"PLEXUS_CHUNK_BYTES": "16K", "PLEXUS_SHM_ROUND_BYTES": "8K", "PLEXUS_SHM_STAGING_BYTES": "64K"}


def check(rank, world, collective):
    checked = 0
    for dtype, op in CASES:
        for count in COUNTS:
            case = f"{collective}/{dtype}/{op}/{count}"
            root = count % world
            inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
            if collective == "all_reduce":
                x = inputs[rank].copy()
                plexus.all_reduce(x, op=ref.plexus_op(op))
                ref.assert_equal(x, ref.reduce_ref(inputs, op, dtype), op, case)
                out = np.empty_like(x)
                plexus.all_reduce(inputs[rank], op=ref.plexus_op(op), out=out)
                ref.assert_equal(out, ref.reduce_ref(inputs, op, dtype), op, "out of place " + case)
            elif collective == "reduce_scatter":
                full = [ref.make_input(case, r, count * world, dtype, op) for r in range(world)]
                out = np.zeros(count, dtype=ref.np_dtype(dtype))
                plexus.reduce_scatter_tensor(out, full[rank], op=ref.plexus_op(op))
                ref.assert_equal(out, ref.reduce_ref(full, op, dtype)[rank * count:(rank + 1) * count], op, case)
            elif collective == "all_gather":
                out = np.zeros(count * world, dtype=ref.np_dtype(dtype))
                plexus.all_gather_into_tensor(out, inputs[rank])
                ref.assert_equal(out, np.concatenate(inputs), "SUM", case)
            elif collective == "broadcast":
                x = inputs[rank].copy()
                plexus.broadcast(x, src=root)
                ref.assert_equal(x, inputs[root], "SUM", case)
            elif collective == "reduce":
                x = inputs[rank].copy()
                plexus.reduce(x, dst=root, op=ref.plexus_op(op))
                want = ref.reduce_ref(inputs, op, dtype) if rank == root else inputs[rank]
                ref.assert_equal(x, want, op if rank == root else "SUM", case)
            elif collective == "barrier":
                plexus.barrier()
            checked += 1
    return checked


# Hierarchical algorithms need several (pretend) hosts with equal numbers of ranks.
HOSTS = {4: "a,a,b,b", 6: "a,a,b,b,c,c"}


def _algorithm_cases():
    for collective in ["all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "barrier"]:
        for name in plexus.algorithms(collective):
            for world in (HOSTS if name == "hierarchical" else WORLDS):
                yield collective, name, world


@pytest.mark.parametrize("collective, algorithm, world", list(_algorithm_cases()))
def test_forced_algorithm_matches_numpy(collective, algorithm, world):
    env = dict(SMALL_CHUNKS, PLEXUS_ALGO=f"{collective}:@{algorithm}")
    if algorithm == "hierarchical":
        env["PLEXUS_HOST_ID_BY_RANK"] = HOSTS[world]
    elif algorithm.startswith("shm"):
        env["PLEXUS_TRANSPORTS"] = "shm,tcp"
    else:
        env["PLEXUS_TRANSPORTS"] = "tcp"  # the generic algorithms over sockets; test_collectives covers shm streams
    counts = run_ranks(world, check, collective, env=env, timeout=600)
    assert all(c == len(CASES) * len(COUNTS) for c in counts), counts


def hierarchical_not_possible(rank, world):
    try:
        plexus.all_reduce(np.ones(4, dtype=np.float32))
    except ValueError as e:
        return str(e)
    return "no error"


def test_hierarchical_refused_on_uneven_hosts():
    env = {"PLEXUS_ALGO": "all_reduce:@hierarchical", "PLEXUS_HOST_ID_BY_RANK": "a,a,b"}
    for msg in run_ranks(3, hierarchical_not_possible, env=env):
        assert "hierarchical" in msg and "cannot run" in msg, msg


def test_every_collective_has_algorithms():
    for collective in ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "barrier",
                       "gather", "scatter", "all_to_all"]:
        assert plexus.algorithms(collective), collective
