"""The "plexus" torch.distributed backend (python/plexus/torch_backend), on real processes.

Every collective, point-to-point call, group, object collective, async handle, functional
collective and init method of torch.distributed runs on 1-4 ranks with backend "plexus" and is
checked against gloo on the same inputs in the same processes (tests/torch_workers.py). Also
the error paths: bad arguments, mismatches between ranks, Work.wait timeouts, group timeouts
and a dead peer. No timing is asserted; the timeouts are generous for a slow 2-core box.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

from launch import collect, run_ranks, start_ranks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 420  # per multi-rank run: 4 ranks importing torch on 2 cores take a while


def _file_init():
    fd, path = tempfile.mkstemp(prefix="plexus-torch-rdv-")
    os.close(fd)
    os.remove(path)
    return f"file://{path}"


def _run(world, name, *args, timeout=TIMEOUT):
    import torch_workers

    return run_ranks(world, getattr(torch_workers, name), *(args or (_file_init(),)), timeout=timeout,
                     join_group=False, env={"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")})


def _free_ports(k):
    socks = []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


WORLDS = [1, 2, 3, 4]


@pytest.mark.parametrize("world", WORLDS)
def test_collectives_match_gloo(world):
    checks = _run(world, "collectives")
    assert all(c == checks[0] for c in checks)
    assert {"all_reduce", "all_reduce PREMUL_SUM", "broadcast/reduce", "all_gather", "reduce_scatter",
            "gather/scatter", "all_to_all", "barrier"} <= set(checks[0])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_point_to_point_match_gloo(world):
    assert _run(world, "p2p") == ["ok"] * world


@pytest.mark.parametrize("world", WORLDS)
def test_groups_and_subgroups(world):
    assert _run(world, "groups") == ["ok"] * world


@pytest.mark.parametrize("world", [1, 3])
def test_object_collectives_match_gloo(world):
    assert _run(world, "objects") == ["ok"] * world


@pytest.mark.parametrize("world", [1, 2, 4])
def test_async_work_and_futures(world):
    assert _run(world, "async_ops") == ["ok"] * world


@pytest.mark.parametrize("world", [1, 2, 3])
def test_functional_collectives_match_gloo(world):
    assert _run(world, "functional") == ["ok"] * world


@pytest.mark.parametrize("world", [1, 2])
def test_init_methods(world, tmp_path):
    port, tcp_port, store_port = _free_ports(3)
    done = _run(world, "init_methods", port, tcp_port, str(tmp_path / "rdv"), store_port)
    assert done == [["env://", "tcp://", "file://", "TCPStore #0", "TCPStore #1", "cpu:plexus on a PrefixStore"]] * world


@pytest.mark.parametrize("world", [1, 2, 3])
def test_errors_surface_as_exceptions(world):
    seen = _run(world, "errors")
    want = ["local"] if world == 1 else ["local", "size", "dtype", "op", "all_gather size", "async size",
                                         "future size", "broadcast size", "scatter size", "wait timeout",
                                         "group timeout"]
    assert seen == [want] * world


@pytest.mark.parametrize("world", [2, 3])
def test_dead_peer_raises_on_survivors(world):
    import torch_workers

    env = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs, results = start_ranks(world, torch_workers.dead_peer, _file_init(), join_group=False, env=env)
    got = collect(procs, results, TIMEOUT, allow_failures=(world - 1,))
    assert got[world - 1] is None
    for r in range(world - 1):
        sync_error, future_error, ddp_error = got[r]
        assert sync_error in ("PeerError", "PlexusError", "CollectiveTimeout"), got[r]
        assert future_error == "RuntimeError" and ddp_error == "RuntimeError", got[r]


# --- registration, in this process and in fresh interpreters --------------------------------------


def test_registered_by_import_torch():
    # The torch.backends entry point (pyproject.toml) ran when torch was imported.
    assert "plexus" in dist.Backend.backend_list
    assert dist.Backend.PLEXUS == "plexus"
    assert dist.Backend.backend_capability["plexus"] == ["cpu", "cuda"]


def test_single_rank_hash_store_in_process():
    from plexus.torch_backend import PlexusProcessGroup

    dist.init_process_group("plexus", store=dist.HashStore(), rank=0, world_size=1)
    try:
        pg = dist.group.WORLD
        assert isinstance(pg, PlexusProcessGroup) and pg.name() == "plexus" and pg.group_name == "0"
        t = torch.arange(4.0)
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()


def _python(code, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=e)


def test_autoload_can_be_disabled_and_import_plexus_registers():
    code = ("import torch.distributed as dist; a = 'plexus' in dist.Backend.backend_list; import plexus; "
            "print(a, 'plexus' in dist.Backend.backend_list)")
    p = _python(code, {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True"], p.stdout


def test_import_plexus_does_not_import_torch():
    p = _python("import sys; import plexus; print('torch' in sys.modules)")
    assert p.returncode == 0 and p.stdout.strip() == "False", (p.stdout, p.stderr)
    # torch missing altogether (None in sys.modules makes `import torch` fail)
    p = _python("import sys; sys.modules['torch'] = None; import plexus; print(plexus.all_reduce.__name__)")
    assert p.returncode == 0 and p.stdout.strip() == "all_reduce", (p.stdout, p.stderr)


def test_autoload_hook_never_raises():
    code = """
import warnings, torch.distributed as dist
import plexus.torch_backend as tb
tb._registered = False
def boom(*a, **k): raise RuntimeError("boom")
dist.Backend.register_backend = boom
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    tb._autoload(); tb._autoload()
print(len(w), "boom" in str(w[0].message))
"""
    p = _python(code)
    assert p.returncode == 0 and p.stdout.split() == ["1", "True"], (p.stdout, p.stderr)


def test_argument_errors_name_the_argument():
    from plexus.torch_backend import ops

    with pytest.raises(ValueError, match="my arg must be contiguous"):
        ops.buffer(torch.zeros(3, 3).t(), "my arg")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        ops.buffer([1, 2], "my arg")
    with pytest.raises(TypeError, match="sparse|dense"):
        ops.buffer(torch.zeros(3).to_sparse(), "my arg")
    with pytest.raises(TypeError, match="cannot reduce"):
        ops.buffer(torch.zeros(3, dtype=torch.uint16), "x", ops.SUM)
    b = ops.buffer(torch.zeros(3, dtype=torch.uint16), "x")  # data movement: as bytes
    assert (b.count, b.itemsize) == (6, 1)
    b = ops.buffer(torch.zeros(3, dtype=torch.complex64), "x", ops.SUM)  # as its real view
    assert b.count == 6
    with pytest.raises(TypeError, match="complex"):
        ops.buffer(torch.zeros(3, dtype=torch.complex64), "x", ops.reduce_op(dist.ReduceOp.MAX, "w")[0])
    assert ops.reduce_op(dist._make_nccl_premul_sum(torch.tensor([0.25])), "w") == (ops.PREMUL_SUM, 0.25)
    assert ops.reduce_op(dist._make_nccl_premul_sum(2.0), "w") == (ops.PREMUL_SUM, 2.0)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_hooks_static_graph_and_join_match_gloo(world):
    assert _run(world, "ddp_features") == ["ok"] * world


def test_one_rank_group_edge_cases():
    """Coalesced calls of nothing complete at once; a gather whose list overlaps its input
    (other than at the root's own slot) is refused before anything is sent."""
    from plexus import _collectives as coll
    from plexus.torch_backend.ops import buffer
    from plexus.torch_backend.process_group import PlexusProcessGroup

    pg = PlexusProcessGroup(dist.HashStore(), 0, 1)
    try:
        for w in (pg.allreduce_coalesced([]), pg.allgather_coalesced([[]], []),
                  pg.all_gather_single_coalesced([], []), pg.reduce_scatter_single_coalesced([], [])):
            assert w.wait() and w.is_completed()
        with pytest.raises(TypeError, match=r"tensors\[1\] has dtype torch.int16"):
            pg.allreduce_coalesced([torch.ones(2), torch.ones(2, dtype=torch.int16)])
    finally:
        pg.shutdown()

    class TwoRanks:
        def rank(self):
            return 0

        def size(self):
            return 2

    def conv(t, what, writable, reduce_op=-1):
        return buffer(t, what, reduce_op)

    x = torch.ones(4)
    with pytest.raises(ValueError, match=r"gather_list\[1\] overlaps the input tensor"):
        coll.gather(TwoRanks(), "w", conv, x, [torch.zeros(4), x], 0)
    assert coll.gather(TwoRanks(), "w", conv, x, [x, torch.zeros(4)], 0).kind == "gather"  # in place: its slot
    base = torch.zeros(9)  # a scatter's output overlapping another rank's input
    with pytest.raises(ValueError, match=r"scatter_list\[1\] overlaps the output tensor"):
        coll.scatter(TwoRanks(), "w", conv, base[:4], [torch.zeros(4), base[2:6]], 0)
    assert coll.scatter(TwoRanks(), "w", conv, x, [x, torch.zeros(4)], 0).kind == "scatter"  # in place: its slot
