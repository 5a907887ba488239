"""new_group: subsets of the world run their own collectives, with src/dst given as global ranks,
checked against numpy; ranks outside a group get GroupMember.NON_GROUP_MEMBER and no-ops. Also
CPU torch tensors through the same calls."""

from __future__ import annotations

import time

import numpy as np
import pytest

import plexus
from launch import run_ranks


def _input(rank, n, dtype=np.float32, salt=0):
    # Distinct small integers per rank: sums are exact in every dtype used here.
    return (np.arange(n) % 11 + 100 * rank + salt).astype(dtype)


def _check_group_collectives(rank, members, group, tag):
    """Runs every collective on `group` (members = its global ranks, sorted) and returns the
    names of the checks that failed on this rank."""
    bad = []

    def expect(ok, what):
        if not ok:
            bad.append(f"{tag}: {what}")

    size = len(members)
    me = members.index(rank)
    expect(plexus.get_rank(group) == me, f"get_rank {plexus.get_rank(group)} != {me}")
    expect(plexus.get_world_size(group) == size, f"get_world_size {plexus.get_world_size(group)} != {size}")

    x = _input(rank, 1000)
    plexus.all_reduce(x, group=group)
    expect(np.array_equal(x, sum(_input(r, 1000) for r in members)), "all_reduce")

    x = _input(rank, 200, np.int32)
    plexus.all_reduce(x, op=plexus.ReduceOp.MAX, group=group)
    expect(np.array_equal(x, _input(members[-1], 200, np.int32)), "all_reduce MAX")

    out = np.zeros(13 * size, np.float64)
    plexus.all_gather_into_tensor(out, _input(rank, 13, np.float64), group=group)
    expect(np.array_equal(out, np.concatenate([_input(r, 13, np.float64) for r in members])), "all_gather_into_tensor")

    outs = [np.zeros(5, np.int64) for _ in range(size)]
    plexus.all_gather(outs, _input(rank, 5, np.int64), group=group)
    expect(all(np.array_equal(outs[i], _input(r, 5, np.int64)) for i, r in enumerate(members)), "all_gather")

    out = np.zeros(17, np.float32)
    plexus.reduce_scatter_tensor(out, _input(rank, 17 * size), group=group)
    full = sum(_input(r, 17 * size) for r in members)
    expect(np.array_equal(out, full[me * 17:(me + 1) * 17]), "reduce_scatter_tensor")

    # src/dst are global ranks: the last member is not group rank `src`/`dst` in general.
    root = members[-1]
    x = _input(rank, 300, salt=7)
    plexus.broadcast(x, src=root, group=group)
    expect(np.array_equal(x, _input(root, 300, salt=7)), f"broadcast from global rank {root}")

    x = _input(rank, 300)
    plexus.reduce(x, dst=root, group=group)
    want = sum(_input(r, 300) for r in members) if rank == root else _input(rank, 300)
    expect(np.array_equal(x, want), f"reduce to global rank {root}")

    plexus.barrier(group=group)
    return bad


def _check_non_member(rank, group, tag):
    bad = []
    if group is not plexus.GroupMember.NON_GROUP_MEMBER:
        return [f"{tag}: rank {rank} got {group!r} instead of NON_GROUP_MEMBER"]
    x = _input(rank, 10)
    calls = {
        "all_reduce": lambda: plexus.all_reduce(x, group=group),
        "all_reduce async": lambda: plexus.all_reduce(x, group=group, async_op=True),
        "broadcast": lambda: plexus.broadcast(x, src=rank, group=group),
        "reduce": lambda: plexus.reduce(x, dst=rank, group=group),
        "all_gather_into_tensor": lambda: plexus.all_gather_into_tensor(np.zeros(20, np.float32), x, group=group),
        "barrier": lambda: plexus.barrier(group=group),
    }
    for name, call in calls.items():
        if call() is not None:
            bad.append(f"{tag}: {name} on a non-member did not return None")
    if not np.array_equal(x, _input(rank, 10)):
        bad.append(f"{tag}: a non-member's tensor was changed")
    if plexus.get_rank(group) != -1 or plexus.get_world_size(group) != -1:
        bad.append(f"{tag}: get_rank/get_world_size of a non-member are not -1")
    return bad


# The default transports (shared memory within a host) and TCP alone.
TRANSPORTS = {"default": None, "tcp": {"PLEXUS_TRANSPORTS": "tcp"}}

# Group layouts by world size: every rank calls new_group for each, in this order.
LAYOUTS = {
    3: [[0, 2], [1], [2, 1, 0], [0, 1]],
    4: [[0, 2], [1, 2, 3], [3, 0, 1], [2], [0, 1, 2, 3]],
}


def subgroups(rank, world):
    groups = [(sorted(ranks), plexus.new_group(ranks)) for ranks in LAYOUTS[world]]
    bad = []
    for i, (members, group) in enumerate(groups):
        tag = f"group {i} {members}"
        if rank in members:
            bad += _check_group_collectives(rank, members, group, tag)
        else:
            bad += _check_non_member(rank, group, tag)
    # The world still works after (and between) the subgroups' ops.
    x = _input(rank, 100)
    plexus.all_reduce(x)
    if not np.array_equal(x, sum(_input(r, 100) for r in range(world))):
        bad.append("world all_reduce after the subgroups")
    return bad


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_subgroups_match_numpy(world, transport):
    for rank, bad in enumerate(run_ranks(world, subgroups, env=TRANSPORTS[transport], timeout=300)):
        assert bad == [], f"rank {rank}: {bad}"


def overlapping_groups(rank, world):
    a_members, b_members = [1, 2, 3], [0, 1, 3]  # ranks 1 and 3 are in both
    a, b = plexus.new_group(a_members), plexus.new_group(b_members)
    bad = []
    for step in range(6):
        # Alternate between the groups (and the world) so ops of different communicators
        # interleave on the shared ranks.
        members, group = (a_members, a) if step % 2 == 0 else (b_members, b)
        if rank in members:
            x = _input(rank, 4096, salt=step)
            plexus.all_reduce(x, group=group)
            if not np.array_equal(x, sum(_input(r, 4096, salt=step) for r in members)):
                bad.append(f"step {step} on {members}")
            y = _input(rank, 8, np.int64, salt=step)
            plexus.broadcast(y, src=members[step % len(members)], group=group)
            if not np.array_equal(y, _input(members[step % len(members)], 8, np.int64, salt=step)):
                bad.append(f"step {step} broadcast on {members}")
        if step % 3 == 2:
            z = np.full(3, rank, np.int64)
            plexus.all_reduce(z)
            if z.tolist() != [sum(range(world))] * 3:
                bad.append(f"step {step} on the world")
    return bad


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_overlapping_groups_used_alternately(transport):
    for rank, bad in enumerate(run_ranks(4, overlapping_groups, env=TRANSPORTS[transport], timeout=300)):
        assert bad == [], f"rank {rank}: {bad}"


def root_outside_group(rank, world):
    group = plexus.new_group([1, 2])
    if group is plexus.GroupMember.NON_GROUP_MEMBER:
        plexus.barrier()  # stay until the members are done (see test_non_member_leaves_early)
        return None
    out = {}
    for name, call in {
        "broadcast": lambda: plexus.broadcast(np.zeros(4, np.float32), src=0, group=group),
        "reduce": lambda: plexus.reduce(np.zeros(4, np.float32), dst=0, group=group),
    }.items():
        try:
            call()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    # Errors found by the core name the rank the same way: as a global rank.
    try:
        plexus.all_reduce(np.zeros(4, np.float32), op=plexus.ReduceOp.BAND, group=group)
        out["band"] = None
    except TypeError as e:
        out["band"] = str(e)
    # Group rank 0 is global rank 1: a group-local root would be a different rank.
    x = np.full(4, rank, np.float32)
    plexus.broadcast(x, src=2, group=group)
    out["broadcast from 2"] = x.tolist()
    plexus.barrier()
    return out


@pytest.fixture(scope="module")
def root_outside_group_results():
    return run_ranks(3, root_outside_group, timeout=180)


def test_root_must_be_a_global_rank_of_the_group(root_outside_group_results):
    results = root_outside_group_results
    assert results[0] is None
    for rank in (1, 2):
        for name in ("broadcast", "reduce"):
            message = results[rank][name]
            assert message is not None, f"rank {rank}: {name} with a root outside the group did not raise"
            assert f"rank {rank}" in message and "rank 0" in message and "not a member" in message, message
        assert results[rank]["broadcast from 2"] == [2.0] * 4


def test_subgroup_errors_name_the_global_rank(root_outside_group_results):
    # Python's checks say "on rank <global rank>"; the core's checks must agree with them.
    for rank in (1, 2):
        band = root_outside_group_results[rank]["band"]
        assert band is not None and "band" in band, f"rank {rank}: BAND on float32 did not raise"
        assert f"on rank {rank}:" in band, f"rank {rank}: {band}"


def leave_after_new_group(rank, world):
    if rank != 0:
        time.sleep(2)  # members come late: a new_group that does not wait for them shows at once
    group = plexus.new_group([1, 2])
    if rank == 0:
        # Nothing to do in the group: leave (launch.py then calls destroy_process_group, as a
        # program's end would). Rank 0 hosts the rendezvous store.
        return None
    x = np.full(4, rank, np.float32)
    plexus.all_reduce(x, group=group)
    return x.tolist()


def test_non_member_leaves_early():
    # Every rank called new_group, as documented; a member must not fail because a non-member
    # went on (here: ended) before the members had set the group up.
    results = run_ranks(3, leave_after_new_group, timeout=180)
    assert results == [None, [3.0] * 4, [3.0] * 4]


def torch_all_reduce(rank, world):
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        t = torch.arange(64, dtype=dtype) + rank  # small integers: exact in bfloat16 too
        want = torch.arange(64, dtype=dtype) * world + sum(range(world))
        assert plexus.all_reduce(t) is None
        out[str(dtype)] = (t.dtype == dtype, torch.equal(t, want))
    # Through a subgroup as well.
    group = plexus.new_group([0, world - 1])
    t = torch.full((10,), float(rank + 1))
    plexus.all_reduce(t, group=group)
    if rank in (0, world - 1):
        out["subgroup"] = (True, torch.equal(t, torch.full((10,), float(1 + world))))
    return out


def test_torch_cpu_tensors():
    pytest.importorskip("torch")
    for rank, out in enumerate(run_ranks(3, torch_all_reduce, timeout=300)):
        for what, (dtype_kept, equal) in out.items():
            assert dtype_kept and equal, f"rank {rank}: {what}"
