"""Rank-side code of tests/test_torch_backend.py: each function runs in every rank of a real
multi-process job (see launch.run_ranks) and checks the "plexus" torch.distributed backend
against gloo on the same inputs, in the same processes (plexus is the default group, gloo a
dist.new_group(backend="gloo") of the same ranks). A failed check raises AssertionError with
what differed; run_ranks reports it with the rank's traceback."""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist
from torch.testing import assert_close

RT = dist.ReduceOp.RedOpType
TIMEOUT = datetime.timedelta(seconds=120)


def _init(rank, world, init_method, backend="plexus", timeout=TIMEOUT):
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, timeout=timeout)
    assert dist.get_backend() == backend, dist.get_backend()


def _data(rank, shape, dtype, salt=0):
    """Small distinct integers per rank (exact sums, products that fit int8 for <= 4 ranks)."""
    n = 1
    for d in shape:
        n *= d
    base = (torch.arange(n, dtype=torch.int64) * 7 + salt) % 5 + 1 + rank  # 1..8
    if dtype == torch.bool:
        return ((base + rank) % 3 == 0).reshape(shape)
    if dtype.is_complex:
        return torch.complex(base.float(), -base.float()).to(dtype).reshape(shape)
    return base.to(dtype).reshape(shape)


def _same(a, b, what, exact=True):
    try:
        if isinstance(a, (list, tuple)):
            assert len(a) == len(b), f"{len(a)} vs {len(b)} tensors"
            for x, y in zip(a, b):
                _same(x, y, what, exact)
            return
        assert a.dtype == b.dtype and a.shape == b.shape, f"{a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if exact:
            assert torch.equal(a, b), f"\nplexus {a}\ngloo   {b}"
        else:
            assert_close(a, b, rtol=1e-2 if a.dtype in (torch.bfloat16, torch.float16) else 1e-5, atol=1e-5)
    except AssertionError as e:
        raise AssertionError(f"{what}: plexus differs from gloo: {e}") from None


def _both(fn, gloo, what, exact=True):
    """Runs fn(group) on the plexus default group and on the gloo group; outputs must agree."""
    a = fn(None)
    b = fn(gloo)
    _same(a, b, what, exact)
    return a


REDUCE_CASES = [
    # (op, dtypes)
    (dist.ReduceOp.SUM, [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64,
                         torch.int8, torch.uint8, torch.complex64]),
    (dist.ReduceOp.AVG, [torch.float32, torch.float64, torch.bfloat16, torch.complex64]),
    (dist.ReduceOp.PRODUCT, [torch.float32, torch.int64, torch.int8]),
    (dist.ReduceOp.MIN, [torch.float32, torch.bfloat16, torch.int32, torch.uint8]),
    (dist.ReduceOp.MAX, [torch.float32, torch.float16, torch.int64, torch.int8]),
    (dist.ReduceOp.BAND, [torch.int32, torch.uint8, torch.int64]),
    (dist.ReduceOp.BOR, [torch.int32, torch.int8]),
    (dist.ReduceOp.BXOR, [torch.int64, torch.uint8]),
]


def collectives(rank, world, init_method):
    """Every collective of torch.distributed on the plexus group == the same call on gloo."""
    _init(rank, world, init_method)
    gloo = dist.new_group(backend="gloo")
    n, checks = world, []

    # all_reduce: every op and dtype gloo takes, shapes incl. 0-dim, empty, odd and large
    for op, dtypes in REDUCE_CASES:
        for dt in dtypes:
            for shape in [(), (0,), (3, 5), (1023,)] if dt == torch.float32 else [(37,)]:
                def f(g, op=op, dt=dt, shape=shape):
                    t = _data(rank, shape, dt)
                    dist.all_reduce(t, op=op, group=g)
                    return t
                exact = op != dist.ReduceOp.AVG and not dt.is_complex
                _both(f, gloo, f"all_reduce {op} {dt} {shape}", exact=exact)
                pass
    checks.append("all_reduce")
    big = _both(lambda g: _all_reduce(rank, (1 << 20) + 3, g), gloo, "all_reduce 4 MiB")  # chunked algorithms
    assert big.numel() == (1 << 20) + 3
    # PREMUL_SUM (gloo has none: compared with gloo's SUM times the factor), factor float or tensor
    for dt in (torch.float32, torch.bfloat16, torch.float64):
        for factor in (0.5, torch.tensor([0.25], dtype=torch.float32), 1.0 / n):
            t = _data(rank, (33,), dt)
            dist.all_reduce(t, op=dist._make_nccl_premul_sum(factor))
            ref = _data(rank, (33,), dt)
            dist.all_reduce(ref, group=gloo)
            f = factor.item() if isinstance(factor, torch.Tensor) else factor
            _same(t, (ref.double() * f).to(dt), f"all_reduce PREMUL_SUM({factor}) {dt}", exact=False)
    checks.append("all_reduce PREMUL_SUM")

    # all_reduce_coalesced
    def arc(g):
        ts = [_data(rank, (4,), torch.float32), _data(rank, (7, 2), torch.float32, 1), _data(rank, (1,), torch.float32)]
        dist.all_reduce_coalesced(ts, op=dist.ReduceOp.MAX, group=g)
        return ts
    _both(arc, gloo, "all_reduce_coalesced")

    # broadcast / reduce from every root
    for root in range(n):
        for dt in (torch.float32, torch.bfloat16, torch.int64, torch.bool, torch.complex128, torch.int16):
            def bc(g, dt=dt, root=root):
                t = _data(rank, (11, 3), dt)
                dist.broadcast(t, src=root, group=g)
                return t
            if dt == torch.int16:  # gloo has no int16: plexus moves it as bytes
                _same(bc(None), _data(root, (11, 3), dt), "broadcast int16")
            else:
                _both(bc, gloo, f"broadcast root {root} {dt}")
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.AVG):
            def red(g, op=op, root=root):
                t = _data(rank, (50,), torch.float32)
                dist.reduce(t, dst=root, op=op, group=g)
                return t
            a, b = red(None), red(gloo)
            if rank == root:
                _same(a, b, f"reduce {op} to {root}", exact=op != dist.ReduceOp.AVG)
            else:  # torch leaves non-root tensors unspecified (gloo scribbles on them); plexus keeps them
                _same(a, _data(rank, (50,), torch.float32), f"reduce {op}: non-root tensor unchanged")
    checks.append("broadcast/reduce")

    # all_gather (list), all_gather_into_tensor (also in place), all_gather_coalesced
    for dt in (torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.complex64):
        def ag(g, dt=dt):
            outs = [torch.full((3, 2), 9, dtype=dt) for _ in range(n)]
            dist.all_gather(outs, _data(rank, (3, 2), dt), group=g)
            return outs
        _both(ag, gloo, f"all_gather {dt}")
        def agt(g, dt=dt):
            out = torch.zeros((n * 4, 3), dtype=dt)
            dist.all_gather_into_tensor(out, _data(rank, (4, 3), dt), group=g)
            return out
        _both(agt, gloo, f"all_gather_into_tensor {dt}")
    def agt_inplace(g):
        out = torch.zeros(n * 6)
        out[rank * 6:(rank + 1) * 6] = _data(rank, (6,), torch.float32)
        dist.all_gather_into_tensor(out, out[rank * 6:(rank + 1) * 6], group=g)
        return out
    _both(agt_inplace, gloo, "all_gather_into_tensor in place")
    def agc(g):
        ins = [_data(rank, (2, 2), torch.float32), _data(rank, (3,), torch.float32, 5)]
        outs = [[torch.zeros_like(t) for t in ins] for _ in range(n)]
        dist.all_gather_coalesced(outs, ins, group=g)
        return [t for lst in outs for t in lst]
    _both(agc, gloo, "all_gather_coalesced")
    def agtc(g):  # torch's allgather_into_tensor_coalesced (the functional collectives' path)
        ins = [_data(rank, (5,), torch.float32), _data(rank, (2, 3), torch.bfloat16, 2)]
        outs = [torch.zeros((n * 5,)), torch.zeros((n * 2, 3), dtype=torch.bfloat16)]
        (g or dist.group.WORLD).allgather_into_tensor_coalesced(outs, ins).wait()
        return outs
    _both(agtc, gloo, "allgather_into_tensor_coalesced")
    checks.append("all_gather")

    # reduce_scatter (list), reduce_scatter_tensor (ops incl. AVG), coalesced
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX, dist.ReduceOp.PRODUCT):
        def rs(g, op=op):
            out = torch.zeros(6)
            dist.reduce_scatter(out, [_data(rank, (6,), torch.float32, i) for i in range(n)], op=op, group=g)
            return out
        _both(rs, gloo, f"reduce_scatter {op}", exact=op != dist.ReduceOp.AVG)
        for dt in (torch.float32, torch.bfloat16):
            def rst(g, op=op, dt=dt):
                out = torch.zeros((2, 5), dtype=dt)
                dist.reduce_scatter_tensor(out, _data(rank, (2 * n, 5), dt), op=op, group=g)
                return out
            _both(rst, gloo, f"reduce_scatter_tensor {op} {dt}", exact=op != dist.ReduceOp.AVG)
    def rst_premul(g):
        out = torch.zeros(4)
        op = dist._make_nccl_premul_sum(0.5) if g is None else dist.ReduceOp.SUM
        dist.reduce_scatter_tensor(out, _data(rank, (4 * n,), torch.float32), op=op, group=g)
        return out if g is None else out * 0.5
    _both(rst_premul, gloo, "reduce_scatter_tensor PREMUL_SUM", exact=False)
    def rstc(g):
        ins = [_data(rank, (3 * n,), torch.float32), _data(rank, (2 * n, 2), torch.float64, 3)]
        outs = [torch.zeros(3), torch.zeros((2, 2), dtype=torch.float64)]
        opts = dist.ReduceScatterOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        (g or dist.group.WORLD).reduce_scatter_tensor_coalesced(outs, ins, opts).wait()
        return outs
    _both(rstc, gloo, "reduce_scatter_tensor_coalesced")
    checks.append("reduce_scatter")

    # gather / scatter for every root
    for root in range(n):
        def ga(g, root=root):
            lst = [torch.zeros(4, dtype=torch.int32) for _ in range(n)] if rank == root else None
            dist.gather(_data(rank, (4,), torch.int32), lst, dst=root, group=g)
            return lst or []
        _both(ga, gloo, f"gather to {root}")
        def sc(g, root=root):
            out = torch.zeros(3, 2)
            lst = [_data(i, (3, 2), torch.float32, root) for i in range(n)] if rank == root else None
            dist.scatter(out, lst, src=root, group=g)
            return out
        _both(sc, gloo, f"scatter from {root}")
    checks.append("gather/scatter")

    # all_to_all (list, uneven), all_to_all_single (even, uneven, 2-D, empty chunks)
    def a2a(g):
        ins = [_data(rank, (3,), torch.float32, j) for j in range(n)]
        outs = [torch.zeros(3) for i in range(n)]
        dist.all_to_all(outs, ins, group=g)
        return outs
    _both(a2a, gloo, "all_to_all")
    # uneven entries (gloo needs equal ones: checked against what each rank sent)
    outs = [torch.zeros(i + rank + 1) for i in range(n)]
    dist.all_to_all(outs, [_data(rank, (rank + j + 1,), torch.float32, j) for j in range(n)])
    _same(outs, [_data(i, (i + rank + 1,), torch.float32, rank) for i in range(n)], "all_to_all uneven")
    def a2as(g):
        out = torch.zeros(2 * n, 3)
        dist.all_to_all_single(out, _data(rank, (2 * n, 3), torch.float32), group=g)
        return out
    _both(a2as, gloo, "all_to_all_single even")
    # rank r sends (r + j) % 3 rows (of 2 columns) to rank j: some are 0
    def a2au(g):
        in_splits = [(rank + j) % 3 for j in range(n)]
        out_splits = [(i + rank) % 3 for i in range(n)]
        out = torch.full((sum(out_splits), 2), -1.0)
        dist.all_to_all_single(out, _data(rank, (sum(in_splits), 2), torch.float32), out_splits, in_splits, group=g)
        return out
    _both(a2au, gloo, "all_to_all_single uneven splits")
    def a2au_bf16(g):
        in_splits = [1 + (rank * j) % 2 for j in range(n)]
        out_splits = [1 + (i * rank) % 2 for i in range(n)]
        out = torch.zeros(sum(out_splits), dtype=torch.bfloat16)
        dist.all_to_all_single(out, _data(rank, (sum(in_splits),), torch.bfloat16), out_splits, in_splits, group=g)
        return out
    _both(a2au_bf16, gloo, "all_to_all_single uneven bf16")
    checks.append("all_to_all")

    dist.barrier()
    dist.barrier(group=gloo)
    w = dist.barrier(async_op=True)
    w.wait()
    checks.append("barrier")
    dist.destroy_process_group()
    return checks


def _all_reduce(rank, count, g):
    t = _data(rank, (count,), torch.float32)
    dist.all_reduce(t, group=g)
    return t


def p2p(rank, world, init_method):
    """send/recv/isend/irecv/batch_isend_irecv with tags and any-source, against gloo."""
    _init(rank, world, init_method)
    gloo = dist.new_group(backend="gloo")
    n = world
    nxt, prv = (rank + 1) % n, (rank - 1) % n
    for g in (None, gloo):
        # Tags: rank 0 sends tag 1 then tag 2; rank 1 receives tag 2 first (matching is per tag).
        if rank == 0:
            dist.send(torch.full((4,), 1.0), dst=1, group=g, tag=1)
            dist.send(torch.full((4,), 2.0), dst=1, group=g, tag=2)
            dist.send(torch.arange(6, dtype=torch.bfloat16), dst=1, group=g, tag=0)
        elif rank == 1:
            a, b, c = torch.zeros(4), torch.zeros(4), torch.zeros(6, dtype=torch.bfloat16)
            if g is None:  # gloo's send is unbuffered, so only plexus can take tag 2 first
                dist.recv(b, src=0, group=g, tag=2)
                dist.recv(a, src=0, group=g, tag=1)
            else:
                dist.recv(a, src=0, group=g, tag=1)
                dist.recv(b, src=0, group=g, tag=2)
            dist.recv(c, src=0, group=g, tag=0)
            _same([a, b, c], [torch.full((4,), 1.0), torch.full((4,), 2.0), torch.arange(6, dtype=torch.bfloat16)],
                  f"send/recv tags ({'plexus' if g is None else 'gloo'})")
        # Any source: every other rank sends its rank to 0, which learns who sent each.
        if rank == 0:
            seen = []
            for _ in range(n - 1):
                t = torch.zeros(2, dtype=torch.int64)
                src = dist.recv(t, group=g, tag=7)
                assert t.tolist() == [src, src * 10], (src, t)
                seen.append(src)
            assert sorted(seen) == list(range(1, n)), seen
        else:
            dist.send(torch.tensor([rank, rank * 10]), dst=0, group=g, tag=7)
        # isend/irecv ring; irecv from any source reports the sender
        buf = torch.zeros(5)
        reqs = [dist.irecv(buf, src=prv, group=g, tag=3), dist.isend(_data(rank, (5,), torch.float32), dst=nxt,
                                                                       group=g, tag=3)]
        for r in reqs:
            r.wait()
        _same(buf, _data(prv, (5,), torch.float32), "isend/irecv ring")
        anybuf = torch.zeros(1)
        w = dist.irecv(anybuf, group=g, tag=4)
        s = dist.isend(torch.tensor([float(rank)]), dst=nxt, group=g, tag=4)
        w.wait()
        s.wait()
        assert anybuf.item() == prv and w._source_rank() == prv, (anybuf, w._source_rank(), prv)
        # batch_isend_irecv, recv posted before send (torch posts them one by one for a Python PG)
        got = torch.zeros(3, dtype=torch.int32)
        ops = [dist.P2POp(dist.irecv, got, prv, g, 5), dist.P2POp(dist.isend, _data(rank, (3,), torch.int32), nxt, g, 5)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        _same(got, _data(prv, (3,), torch.int32), "batch_isend_irecv ring")
        # objects over p2p
        if rank == 0:
            dist.send_object_list([{"from": 0, "x": [1, 2]}, "s"], dst=n - 1, group=g)
        elif rank == n - 1:
            objs = [None, None]
            dist.recv_object_list(objs, src=0, group=g)
            assert objs == [{"from": 0, "x": [1, 2]}, "s"], objs
        dist.barrier(group=g)
    dist.destroy_process_group()
    return "ok"


def groups(rank, world, init_method):
    """new_group (subsets, global src/dst), non-members, new_subgroups, a gloo group beside."""
    _init(rank, world, init_method)
    n = world
    evens = [r for r in range(n) if r % 2 == 0]
    g = dist.new_group(evens)
    gg = dist.new_group(evens, backend="gloo")
    if rank in evens:
        assert dist.get_backend(g) == "plexus" and dist.get_rank(g) == evens.index(rank)
        assert dist.get_world_size(g) == len(evens)
        assert g.group_name and g.name() == "plexus", (g.group_name, g.name())
        for grp in (g, gg):
            t = _data(rank, (9,), torch.float32)
            dist.all_reduce(t, group=grp)
            t2 = _data(rank, (4,), torch.float32)
            dist.broadcast(t2, src=evens[-1], group=grp)  # a global rank
            outs = [torch.zeros(2) for _ in evens]
            dist.all_gather(outs, _data(rank, (2,), torch.float32), group=grp)
            if grp is g:
                mine = (t, t2, outs)
            else:
                _same(mine, (t, t2, outs), "subgroup collectives")
        if len(evens) > 1:  # p2p inside the group with global ranks
            if rank == evens[0]:
                dist.send(torch.tensor([42.0]), dst=evens[1], group=g)
            elif rank == evens[1]:
                t = torch.zeros(1)
                assert dist.recv(t, src=evens[0], group=g) == evens[0] and t.item() == 42.0
                t = torch.zeros(1)
    else:
        assert g == dist.GroupMember.NON_GROUP_MEMBER
        assert dist.get_rank(g) == -1
    # new_subgroups: consecutive pairs (world 1..4: group size 1 or 2)
    size = 2 if n % 2 == 0 else 1
    cur, subs = dist.new_subgroups(group_size=size)
    assert len(subs) == n // size and dist.get_world_size(cur) == size
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=cur)
    first = rank - rank % size
    assert t.item() == sum(range(first, first + size)), t
    # groups of groups: the default group's name resolves (functional collectives need it)
    from torch.distributed.distributed_c10d import _resolve_process_group
    assert _resolve_process_group(dist.group.WORLD.group_name) is dist.group.WORLD
    # a 2-D device mesh builds plexus groups for each dimension
    if n in (2, 4):
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (n // 2, 2))
        for dim in range(2):
            pg = mesh.get_group(dim)
            assert dist.get_backend(pg) == "plexus", dist.get_backend(pg)
            t = torch.ones(1)
            dist.all_reduce(t, group=pg)
            assert t.item() == mesh.size(dim), (t, dim)
    dist.barrier()
    dist.destroy_process_group()
    return "ok"


def objects(rank, world, init_method):
    """Object collectives: all_gather_object, broadcast_object_list, gather/scatter_object_list."""
    _init(rank, world, init_method)
    gloo = dist.new_group(backend="gloo")
    n = world
    obj = {"rank": rank, "payload": list(range(rank * 3)), "t": torch.arange(rank + 1)}
    res = {}
    for name, g in (("plexus", None), ("gloo", gloo)):
        out = [None] * n
        dist.all_gather_object(out, obj, group=g)
        lst = [f"root-{rank}", {"k": rank}, None] if rank == n - 1 else [None, None, None]
        dist.broadcast_object_list(lst, src=n - 1, group=g)
        gathered = [None] * n if rank == 0 else None
        dist.gather_object(obj, gathered, dst=0, group=g)
        sc = [None]
        dist.scatter_object_list(sc, [f"to-{i}" for i in range(n)] if rank == 0 else None, src=0, group=g)
        res[name] = (out, lst, gathered, sc)
    p, q = res["plexus"], res["gloo"]
    assert [o["rank"] for o in p[0]] == list(range(n)) and all(torch.equal(a["t"], b["t"]) for a, b in zip(p[0], q[0]))
    assert [o["payload"] for o in p[0]] == [o["payload"] for o in q[0]]
    assert p[1] == q[1] == [f"root-{n - 1}", {"k": n - 1}, None], (p[1], q[1])
    if rank == 0:
        assert [o["rank"] for o in p[2]] == [o["rank"] for o in q[2]] == list(range(n))
    assert p[3] == q[3] == [f"to-{rank}"], (p[3], q[3])
    dist.destroy_process_group()
    return "ok"


def async_ops(rank, world, init_method):
    """async_op=True: Work.wait / is_completed / get_future (+then, wait_all) / result / exception."""
    _init(rank, world, init_method)
    side = dist.new_group(backend="gloo")  # orders the ranks where a check needs it
    n = world
    ts = [_data(rank, (1000 + i,), torch.float32) for i in range(8)]
    works = [dist.all_reduce(t, async_op=True) for t in ts]
    futs = [w.get_future() for w in works[::2]]
    for i, w in enumerate(works):
        assert w.wait() is True
        assert w.is_completed() and w.is_success() and w.exception() is None
        want = sum(_data(r, (1000 + i,), torch.float32) for r in range(n))
        _same(ts[i], want, f"async all_reduce {i}")
    torch.futures.wait_all(futs)
    for f, t in zip(futs, ts[::2]):
        assert f.done() and f.value()[0] is t
    # future callbacks, as DDP comm hooks chain them
    t = _data(rank, (64,), torch.float32)
    fut = dist.all_reduce(t, async_op=True).get_future().then(lambda f: f.value()[0] / n)
    _same(fut.wait(), sum(_data(r, (64,), torch.float32) for r in range(n)) / n, "get_future().then", exact=False)
    # every async collective gives a Work with a future; result() gives the output tensors
    out = torch.zeros(n * 3)
    w = dist.all_gather_into_tensor(out, _data(rank, (3,), torch.float32), async_op=True)
    assert w.get_future().wait()[0] is out and w.result()[0] is out
    lst = [torch.zeros(2) for _ in range(n)]
    w = dist.all_gather(lst, _data(rank, (2,), torch.float32), async_op=True)
    w.get_future().wait()
    _same(lst, [_data(r, (2,), torch.float32) for r in range(n)], "async all_gather")
    w = dist.barrier(async_op=True)
    w.get_future().wait()
    assert w.is_completed()
    # is_completed is False while a peer has not joined; the future completes once it has
    if n > 1:
        if rank == 0:
            t = torch.ones(4)
            w = dist.all_reduce(t, async_op=True)
            fut = w.get_future()
            time.sleep(0.5)
            assert not w.is_completed() and not fut.done(), "completed before the other ranks joined"
            dist.barrier(group=side)
            fut.wait()
            assert w.is_completed() and t.tolist() == [n] * 4
        else:
            dist.barrier(group=side)
            t = torch.ones(4)
            dist.all_reduce(t)
        # futures of p2p ops complete out of order with collectives
        if rank == 0:
            buf = torch.zeros(1)
            r = dist.irecv(buf, src=1, tag=9)
            rf = r.get_future()
            t = torch.ones(2)
            af = dist.all_reduce(t, async_op=True).get_future()
            af.wait()  # completes although the receive posted before it has not
            assert not rf.done()
            dist.barrier(group=side)
            rf.wait()
            assert buf.item() == 5.0 and r.is_completed()
        else:
            t = torch.ones(2)
            dist.all_reduce(t)
            dist.barrier(group=side)
            if rank == 1:
                dist.send(torch.tensor([5.0]), dst=0, tag=9)
    dist.destroy_process_group()
    return "ok"


def functional(rank, world, init_method):
    """torch.distributed._functional_collectives (they resolve the group by name, from C++)."""
    import torch.distributed._functional_collectives as fcol
    _init(rank, world, init_method)
    gloo = dist.new_group(backend="gloo")
    n = world
    pg = dist.group.WORLD
    res = {}
    for name, g in (("plexus", pg), ("gloo", gloo)):
        x = _data(rank, (4 * n, 2), torch.float32)
        res[name] = [
            fcol.all_reduce(x, "sum", g),
            fcol.all_reduce(x, "avg", g),
            fcol.all_reduce(x, "max", g),
            fcol.all_gather_tensor(x, 0, g),
            fcol.all_gather_tensor(x.to(torch.bfloat16), 1, g),
            fcol.reduce_scatter_tensor(x, "sum", 0, g),
            fcol.reduce_scatter_tensor(x, "avg", 0, g),
            fcol.all_to_all_single(x, None, None, g),
            fcol.broadcast(x, 0, g),
            *fcol.all_reduce_coalesced([x, x[:1] + 1], "sum", g),
            *fcol.all_gather_into_tensor_coalesced([x, x[0]], g),
            *fcol.reduce_scatter_tensor_coalesced([x, x * 2], "sum", [0, 0], g),
        ]
        res[name] = [fcol.wait_tensor(t) if isinstance(t, torch.Tensor) else t for t in res[name]]
    _same(res["plexus"], res["gloo"], "functional collectives", exact=False)
    # uneven all_to_all_single through the functional API
    ins = [1 + (rank + j) % 2 for j in range(n)]
    outs = [1 + (i + rank) % 2 for i in range(n)]
    got = fcol.all_to_all_single(_data(rank, (sum(ins),), torch.float32), outs, ins, pg)
    want = fcol.all_to_all_single(_data(rank, (sum(ins),), torch.float32), outs, ins, gloo)
    _same(fcol.wait_tensor(got), fcol.wait_tensor(want), "fcol.all_to_all_single uneven")
    # under torch.compile (eager backend: no compiler toolchain needed)
    f = torch.compile(lambda t: fcol.all_reduce(t * 2, "sum", pg), backend="eager")
    _same(f(torch.ones(3)), torch.full((3,), 2.0 * n), "fcol under torch.compile")
    dist.destroy_process_group()
    return "ok"


def init_methods(rank, world, port, tcp_port, file_path, store_port):
    """env://, tcp://, file://, an explicit TCPStore (twice on the same store) and "cpu:plexus";
    the timeout given to init_process_group reaches the core."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    done = []

    def check(how):
        t = torch.full((3,), float(rank + 1))
        dist.all_reduce(t)
        assert t.tolist() == [world * (world + 1) / 2] * 3, (how, t)
        assert "plexus" in dist.get_backend(), dist.get_backend()
        done.append(how)
        dist.destroy_process_group()

    dist.init_process_group("plexus", timeout=datetime.timedelta(seconds=77))
    assert dist.group.WORLD.comm.timeout == 77.0, dist.group.WORLD.comm.timeout
    check("env://")
    dist.init_process_group("plexus", init_method=f"tcp://127.0.0.1:{tcp_port}", rank=rank, world_size=world)
    check("tcp://")
    dist.init_process_group("plexus", init_method=f"file://{file_path}", rank=rank, world_size=world)
    check("file://")
    store = dist.TCPStore("127.0.0.1", store_port, world, is_master=rank == 0, timeout=TIMEOUT)
    for i in range(2):  # the same store twice: the second group must not read the first's keys
        dist.init_process_group("plexus", store=store, rank=rank, world_size=world)
        check(f"TCPStore #{i}")
    dist.init_process_group("cpu:plexus", store=dist.PrefixStore("p/", store), rank=rank, world_size=world)
    check("cpu:plexus on a PrefixStore")
    return done


def _raises(exc_types, fn, what, match=None):
    try:
        fn()
    except exc_types as e:
        if match is not None and match not in str(e):
            raise AssertionError(f"{what}: {type(e).__name__} without {match!r}: {e}") from None
        return e
    except BaseException as e:  # noqa: BLE001
        raise AssertionError(f"{what}: expected {exc_types}, got {type(e).__name__}: {e}") from None
    raise AssertionError(f"{what}: no exception")


def errors(rank, world, init_method):
    """Bad calls raise on the spot (TypeError/ValueError); mismatches between ranks raise
    (a RuntimeError: plexus.PlexusError) on every rank through the sync call or Work.wait();
    a Work.wait(timeout) that runs out raises; a group's timeout fails a collective that a
    peer never joins."""
    import plexus
    _init(rank, world, init_method)
    side = dist.new_group(backend="gloo")
    n = world
    seen = []
    # -- caught on the calling rank, before anything is sent: the group stays usable -------
    nc = torch.zeros(4, 4).t()
    e = _raises(ValueError, lambda: dist.all_reduce(nc), "non-contiguous", match="contiguous")
    assert "tensor" in str(e)
    _raises(TypeError, lambda: dist.all_reduce(torch.zeros(3, dtype=torch.int16)), "int16 reduce", match="int16")
    _raises(TypeError, lambda: dist.all_reduce(torch.zeros(3, dtype=torch.int32), op=dist.ReduceOp.AVG),
            "AVG on int32", match="avg")
    _raises(TypeError, lambda: dist.all_reduce(torch.zeros(3), op=dist.ReduceOp.BAND), "BAND on float")
    _raises(TypeError, lambda: dist.all_reduce(torch.zeros(3, device="meta")), "meta tensor", match="CPU")
    _raises(ValueError, lambda: dist.all_gather_into_tensor(torch.zeros(n * 3 + 1), torch.zeros(3)),
            "all_gather_into_tensor size", match="elements")
    _raises(TypeError, lambda: dist.all_gather_into_tensor(torch.zeros(n * 3, dtype=torch.float64), torch.zeros(3)),
            "all_gather_into_tensor dtype", match="dtype")
    _raises(ValueError, lambda: dist.all_gather([torch.zeros(3) for _ in range(n)], torch.zeros(4)),
            "all_gather sizes", match="elements")
    _raises(ValueError, lambda: dist.reduce_scatter_tensor(torch.zeros(2), torch.zeros(2 * n + 1)),
            "reduce_scatter_tensor size", match="elements")
    _raises(ValueError, lambda: dist.all_to_all_single(torch.zeros(n), torch.zeros(n), [n + 1] + [0] * (n - 1), None),
            "all_to_all_single splits", match="split")
    t = torch.ones(5)
    dist.all_reduce(t)
    assert t.tolist() == [n] * 5, "the group is still usable after local errors"
    seen.append("local")
    # -- mismatches between ranks: every rank raises, a RuntimeError ------------------------
    if n > 1:
        cases = [
            ("size", lambda g: dist.all_reduce(torch.ones(4 if rank == 0 else 5), group=g)),
            ("dtype", lambda g: dist.all_reduce(torch.ones(4, dtype=torch.float32 if rank == 0 else torch.int32),
                                                group=g)),
            ("op", lambda g: dist.all_reduce(torch.ones(4), op=dist.ReduceOp.SUM if rank == 0 else dist.ReduceOp.MAX,
                                             group=g)),
            ("all_gather size", lambda g: dist.all_gather_into_tensor(torch.zeros(n * (2 + (rank == 1))),
                                                                      torch.zeros(2 + (rank == 1)), group=g)),
            ("async size", lambda g: dist.all_reduce(torch.ones(3 + rank), group=g, async_op=True).wait()),
            ("future size", lambda g: dist.all_gather_into_tensor(torch.zeros(n * (2 + rank)), torch.zeros(2 + rank),
                                                                  group=g, async_op=True).get_future().wait()),
            # Rooted one-way ops: the ranks that receive raise; the sender may finish first (as
            # with gloo), see the report in the backend's notes.
            ("broadcast size", lambda g: dist.broadcast(torch.ones(3 + rank), src=0, group=g)),
            ("scatter size", lambda g: dist.scatter(torch.ones(3 + rank),
                                                    [torch.ones(3)] * n if rank == 0 else None, src=0, group=g)),
        ]
        for name, fn in cases:
            g = dist.new_group()  # a failed group is unusable: one per case
            if name in ("broadcast size", "scatter size") and rank == 0:
                try:
                    fn(g)
                except RuntimeError:
                    pass
            else:
                e = _raises(RuntimeError, lambda: fn(g), f"mismatched {name}")
                assert isinstance(e, plexus.PlexusError) or "plexus" in str(e).lower(), e
            seen.append(name)
        # Work.wait(timeout) that runs out raises; the op goes on and completes later
        g = dist.new_group()
        t = torch.ones(2)
        if rank == 0:
            w = dist.all_reduce(t, group=g, async_op=True)
            _raises(RuntimeError, lambda: w.wait(datetime.timedelta(seconds=0.3)), "Work.wait timeout",
                    match="did not complete")
            dist.barrier(group=side)
            assert w.wait() and t.tolist() == [n, n]
        else:
            dist.barrier(group=side)
            dist.all_reduce(t, group=g)
        seen.append("wait timeout")
        # a collective that a peer never joins fails after the group's timeout
        g = dist.new_group(timeout=datetime.timedelta(seconds=6))
        if rank == 0:
            e = _raises(RuntimeError, lambda: dist.all_reduce(torch.ones(2), group=g), "group timeout")
            assert isinstance(e, plexus.PlexusError), e
        dist.barrier(group=side)
        seen.append("group timeout")
    dist.destroy_process_group()
    return seen


def dead_peer(rank, world, init_method):
    """The last rank dies (os._exit) after a few good steps: the survivors get an exception
    from a sync collective, Work.wait(), a future, and DDP's backward; no hang, no crash."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    _init(rank, world, init_method, timeout=datetime.timedelta(seconds=60))
    n = world
    g2, g3 = dist.new_group(), dist.new_group()
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(4, 2), process_group=g3)
    model(torch.randn(3, 4)).sum().backward()
    for g in (None, g2):
        t = torch.ones(3)
        dist.all_reduce(t, group=g)
        assert t.tolist() == [n] * 3
    dist.barrier()
    if rank == n - 1:
        os._exit(17)
    got = []
    e = _raises(RuntimeError, lambda: dist.all_reduce(torch.ones(1000)), "sync all_reduce with a dead peer")
    got.append(type(e).__name__)
    w = dist.all_reduce(torch.ones(1000), group=g2, async_op=True)
    e = _raises(RuntimeError, lambda: w.get_future().wait(), "future with a dead peer")
    _raises(RuntimeError, w.wait, "Work.wait with a dead peer")
    assert w.is_completed() and not w.is_success() and w.exception() is not None
    got.append(type(e).__name__)
    e = _raises(RuntimeError, lambda: model(torch.randn(3, 4)).sum().backward(), "DDP backward with a dead peer")
    got.append(type(e).__name__)
    dist.destroy_process_group()
    return got


def ddp_features(rank, world, init_method):
    """DDP extras on plexus == on gloo: comm hooks (fp16 compression, PowerSGD, whose callbacks
    start collectives and wait on their futures), a Python hook on get_future().then,
    static_graph, and Join with uneven inputs."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.distributed.algorithms.join import Join
    from torch.nn.parallel import DistributedDataParallel as DDP
    _init(rank, world, init_method)
    gloo = dist.new_group(backend="gloo")

    def py_hook(state, bucket):
        t = bucket.buffer().div_(world)
        return dist.all_reduce(t, group=state, async_op=True).get_future().then(lambda f: f.value()[0])

    def train(g, feature):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        ddp = DDP(model, process_group=g, static_graph=feature == "static_graph", bucket_cap_mb=0.0005)
        if feature == "fp16":
            ddp.register_comm_hook(g, default_hooks.fp16_compress_hook)
        elif feature == "powerSGD":
            ddp.register_comm_hook(psgd.PowerSGDState(process_group=g, matrix_approximation_rank=1,
                                                      start_powerSGD_iter=2), psgd.powerSGD_hook)
        elif feature == "python hook":
            ddp.register_comm_hook(g or dist.group.WORLD, py_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        steps = 4 + (rank if feature == "join" else 0)  # uneven inputs under Join
        with Join([ddp], enable=feature == "join"):
            for step in range(steps):
                x = torch.randn(6, 8, generator=torch.Generator().manual_seed(step * 10 + rank))
                opt.zero_grad()
                ddp(x).pow(2).mean().backward()
                opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for feature in ("fp16", "powerSGD", "python hook", "static_graph", "join"):
        _same(train(None, feature), train(gloo, feature), f"DDP {feature}", exact=False)
    dist.destroy_process_group()
    return "ok"
