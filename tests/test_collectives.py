"""Every collective against numpy, on 1-4 real processes, over every dtype, op and a spread of
counts (0, 1, 7, 1000, 2^20+3), in place and out of place."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
import reference as ref
from launch import run_ranks

WORLD_SIZES = [1, 2, 3, 4]
# How the ranks (all on this host) talk: the default (direct shared-memory algorithms), TCP
# only (ring/chain over sockets), and the ring/chain algorithms over shared-memory streams.
TRANSPORTS = {
    "default": {},
    "tcp": {"PLEXUS_TRANSPORTS": "tcp"},
    "shm_stream": {
        "PLEXUS_TRANSPORTS": "shm",
        "PLEXUS_ALGO": "allreduce:@ring#allgather:@ring#reducescatter:@ring#broadcast:@chain#reduce:@chain#barrier:@dissemination",
    },
    # Pretend hosts: shared memory within each, TCP between, and the tuner's multi-host choices.
    "hosts": {},
}
PRETEND_HOSTS = {2: "a,b", 3: "a,a,b", 4: "a,a,b,b"}


def _reducing_cases(prefix):
    for dtype in ref.DTYPES:
        for op in ref.OPS:
            if ref.valid(op, dtype):
                for count in ref.COUNTS:
                    yield f"{prefix}/{dtype}/{op}/{count}", dtype, op, count


def _plain_cases(prefix, counts=ref.COUNTS):
    for dtype in ref.DTYPES:
        for count in counts:
            yield f"{prefix}/{dtype}/{count}", dtype, count


# The check_* functions below take their cases (what _reducing_cases / _plain_cases yield) as an
# argument, so other test files run the same checks over their own counts (test_ucx.py).
LARGE_FROM = 4096  # counts from which the per-rank collectives take a share of the count


def check_all_reduce(rank, world, cases=None):
    checked = 0
    for case, dtype, op, count in cases or _reducing_cases("all_reduce"):
        inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
        want = ref.reduce_ref(inputs, op, dtype)
        x = inputs[rank].copy()
        plexus.all_reduce(x, op=ref.plexus_op(op))
        ref.assert_equal(x, want, op, f"in place {case}")
        x = inputs[rank].copy()
        out = np.empty_like(x)
        plexus.all_reduce(x, op=ref.plexus_op(op), out=out)
        ref.assert_equal(out, want, op, f"out of place {case}")
        ref.assert_equal(x, inputs[rank], "SUM", f"input left alone {case}")
        checked += 2
    # A read-only input is fine when the result goes to `out`.
    x = np.arange(7, dtype=np.float32) + rank
    x.flags.writeable = False
    out = np.empty_like(x)
    plexus.all_reduce(x, out=out)
    ref.assert_equal(out, sum(np.arange(7, dtype=np.float32) + r for r in range(world)), "SUM", "read-only input")
    # Another numpy type number for the same dtype (NPY_LONGLONG beside NPY_LONG for int64).
    y = np.arange(5, dtype=np.longlong) * (rank + 1)
    plexus.all_reduce(y)
    ref.assert_equal(y, np.arange(5, dtype=np.int64) * sum(range(1, world + 1)), "SUM", "longlong")
    return checked + 2


def check_all_gather(rank, world, cases=None):
    checked = 0
    for case, dtype, count in cases or _plain_cases("all_gather"):
        inputs = [ref.make_input(case, r, count, dtype) for r in range(world)]
        dt = ref.np_dtype(dtype)
        # list form, out of place
        outs = [np.full(count, 1, dtype=dt) for _ in range(world)]
        plexus.all_gather(outs, inputs[rank].copy())
        for r in range(world):
            ref.assert_equal(outs[r], inputs[r], "SUM", f"list {case} block {r}")
        # list form, in place: this rank's entry is the input itself
        outs = [np.zeros(count, dtype=dt) for _ in range(world)]
        outs[rank][:] = inputs[rank]
        plexus.all_gather(outs, outs[rank])
        for r in range(world):
            ref.assert_equal(outs[r], inputs[r], "SUM", f"list in place {case} block {r}")
        want = np.concatenate(inputs)
        # into one tensor, out of place
        out = np.zeros(count * world, dtype=dt)
        plexus.all_gather_into_tensor(out, inputs[rank])
        ref.assert_equal(out, want, "SUM", f"into tensor {case}")
        # into one tensor, in place
        out = np.zeros(count * world, dtype=dt)
        mine = out[rank * count:(rank + 1) * count]
        mine[:] = inputs[rank]
        plexus.all_gather_into_tensor(out, mine)
        ref.assert_equal(out, want, "SUM", f"into tensor in place {case}")
        checked += 4
    return checked


def check_reduce_scatter(rank, world, cases=None):
    checked = 0
    for case, dtype, op, count in cases or _reducing_cases("reduce_scatter"):
        if count >= LARGE_FROM:
            # The large case moves about as much data as all_reduce's: 2^20+3 elements in all.
            count = count // world + 1
        full = [ref.make_input(case, r, count * world, dtype, op) for r in range(world)]
        want = ref.reduce_ref(full, op, dtype)[rank * count:(rank + 1) * count]
        dt = ref.np_dtype(dtype)
        # list form
        out = np.zeros(count, dtype=dt)
        plexus.reduce_scatter(out, [full[rank][i * count:(i + 1) * count].copy() for i in range(world)], op=ref.plexus_op(op))
        ref.assert_equal(out, want, op, f"list {case}")
        # one tensor, out of place
        out = np.zeros(count, dtype=dt)
        src = full[rank].copy()
        plexus.reduce_scatter_tensor(out, src, op=ref.plexus_op(op))
        ref.assert_equal(out, want, op, f"tensor {case}")
        ref.assert_equal(src, full[rank], "SUM", f"input left alone {case}")
        # one tensor, in place: the output is this rank's block of the input
        src = full[rank].copy()
        out = src[rank * count:(rank + 1) * count]
        plexus.reduce_scatter_tensor(out, src, op=ref.plexus_op(op))
        ref.assert_equal(out, want, op, f"tensor in place {case}")
        checked += 3
    return checked


def check_broadcast(rank, world, cases=None):
    checked = 0
    for i, (case, dtype, count) in enumerate(cases or _plain_cases("broadcast")):
        root = i % world
        want = ref.make_input(case, root, count, dtype)
        x = want.copy() if rank == root else ref.make_input(case + "/junk", rank, count, dtype)
        plexus.broadcast(x, src=root)
        ref.assert_equal(x, want, "SUM", f"{case} root {root}")
        checked += 1
    return checked


def check_reduce(rank, world, cases=None):
    checked = 0
    for i, (case, dtype, op, count) in enumerate(cases or _reducing_cases("reduce")):
        root = i % world
        inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
        x = inputs[rank].copy()
        plexus.reduce(x, dst=root, op=ref.plexus_op(op))
        if rank == root:
            ref.assert_equal(x, ref.reduce_ref(inputs, op, dtype), op, f"{case} root {root}")
        else:
            ref.assert_equal(x, inputs[rank], "SUM", f"{case}: non-root tensor left alone")
        checked += 1
    return checked


def check_gather(rank, world, cases=None):
    checked = 0
    for i, (case, dtype, count) in enumerate(cases or _plain_cases("gather")):
        root = i % world
        inputs = [ref.make_input(case, r, count, dtype) for r in range(world)]
        outs = [np.zeros(count, dtype=ref.np_dtype(dtype)) for _ in range(world)] if rank == root else None
        plexus.gather(inputs[rank], outs, dst=root)
        if rank == root:
            for r in range(world):
                ref.assert_equal(outs[r], inputs[r], "SUM", f"{case} root {root} block {r}")
        checked += 1
    return checked


def check_scatter(rank, world, cases=None):
    checked = 0
    for i, (case, dtype, count) in enumerate(cases or _plain_cases("scatter")):
        root = i % world
        blocks = [ref.make_input(case, r, count, dtype) for r in range(world)]
        out = np.zeros(count, dtype=ref.np_dtype(dtype))
        plexus.scatter(out, blocks if rank == root else None, src=root)
        ref.assert_equal(out, blocks[rank], "SUM", f"{case} root {root}")
        checked += 1
    return checked


def _pair_count(i, j, base):
    # Uneven, sometimes empty, and different in each direction.
    return (base + 3 * i + 5 * j) % 7 if base < 100 else base + i - j


def check_all_to_all(rank, world, cases=None):
    checked = 0
    # Every rank builds all N^2 blocks to check against: a large count that still spans several
    # chunks keeps this affordable.
    for case, dtype, count in cases or _plain_cases("all_to_all", [0, 1, 7, 1000, 65537]):
        dt = ref.np_dtype(dtype)
        sent = {(i, j): ref.make_input(f"{case}/{i}->{j}", 0, _pair_count(i, j, count), dtype) for i in range(world) for j in range(world)}
        # list form, uneven sizes
        outs = [np.zeros(_pair_count(j, rank, count), dtype=dt) for j in range(world)]
        plexus.all_to_all(outs, [sent[(rank, j)].copy() for j in range(world)])
        for j in range(world):
            ref.assert_equal(outs[j], sent[(j, rank)], "SUM", f"list {case} from {j}")
        # single arrays split by rows (3 columns), uneven splits
        rows_in = [_pair_count(rank, j, count) for j in range(world)]
        rows_out = [_pair_count(j, rank, count) for j in range(world)]
        src = np.concatenate([np.repeat(sent[(rank, j)][:, None], 3, axis=1) for j in range(world)])
        dst = np.zeros((sum(rows_out), 3), dtype=dt)
        plexus.all_to_all_single(dst, src, rows_out, rows_in)
        want = np.concatenate([np.repeat(sent[(j, rank)][:, None], 3, axis=1) for j in range(world)])
        ref.assert_equal(dst, want, "SUM", f"single {case}")
        checked += 2
    # even splits without sizes
    src = np.arange(world * 4, dtype=np.int64) + 100 * rank
    dst = np.zeros_like(src)
    plexus.all_to_all_single(dst, src)
    want = np.concatenate([np.arange(rank * 4, rank * 4 + 4) + 100 * j for j in range(world)])
    ref.assert_equal(dst, want.astype(np.int64), "SUM", "even split")
    return checked + 1


def check_barrier(rank, world):
    for _ in range(20):
        plexus.barrier()
    return 20


CHECKS = {
    "all_reduce": check_all_reduce,
    "all_gather": check_all_gather,
    "reduce_scatter": check_reduce_scatter,
    "broadcast": check_broadcast,
    "reduce": check_reduce,
    "barrier": check_barrier,
    "gather": check_gather,
    "scatter": check_scatter,
    "all_to_all": check_all_to_all,
}


# One rank never communicates, so it runs in the default setting only.
CASES = [(c, w, t) for c in CHECKS for w in WORLD_SIZES for t in TRANSPORTS if w > 1 or t == "default"]


@pytest.mark.parametrize("collective, world, transport", CASES)
def test_collective_matches_numpy(collective, world, transport):
    env = dict(TRANSPORTS[transport])
    if transport == "hosts":
        env["PLEXUS_HOST_ID_BY_RANK"] = PRETEND_HOSTS[world]
    checked = run_ranks(world, CHECKS[collective], timeout=900, env=env)
    assert all(c == checked[0] and c > 0 for c in checked), checked
