"""The ucx transport (csrc/transport/ucx): openucx's UCP tag API, libucp loaded at run time
(PLEXUS_UCX_LIBRARY, else the system's libucp.so.0, else the libucx wheel's), on real
processes of this host. UCX_TLS picks what UCX itself may use: TCP (`tcp,self`) or shared
memory with cross-memory attach (`posix,cma,self`); the wheel has no InfiniBand, so UCX runs
only where PLEXUS_TRANSPORTS names it.

Every collective and point-to-point call against numpy on 1-4 ranks (every dtype and op at
sizes 0, 1 and a prime, some at 3 MiB + 7 elements, which spans several chunks; in place and
out of place), the transport each peer gets, a missing or
broken library (a warning and TCP, or an error when ucx is the only transport), ranks with
different UCX versions, a killed rank, torch tensors (UCX's memory hooks under torch's
allocator), an idle communicator's CPU time and a fork()ed child. Skipped, with the reason, where
the libucx wheel is not installed (`pip install libucx-cu12`; .ci/run installs it)."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import plexus
import reference as ref
from plexus import _C
from launch import run_ranks
from test_fork import _fork_and_report, check_child_raised

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# .ci/run unpacks an older UCX wheel (another minor version) here, for the version mismatch test.
OLD_UCX = os.path.join(ROOT, ".ci", "cache", "libucx-old", "libucx", "lib", "libucp.so.0")


def _why_not() -> str:
    if importlib.util.find_spec("libucx") is None:
        return "UCX cannot load: the libucx wheel is not installed (pip install libucx-cu12; .ci/run installs it)"
    return ""


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "ok")

# What UCX may use between the ranks: TCP sockets, or shared memory and process_vm_readv.
TLS = {"tcp": "tcp,self", "shm": "posix,cma,self"}
TIMEOUT = 420  # per multi-rank run: 4 ranks on 2 cores


def ucx_env(tls: str = "tcp", **extra) -> dict:
    return dict({"PLEXUS_TRANSPORTS": "ucx", "UCX_TLS": TLS[tls]}, **extra)


def wheel_library() -> str:
    spec = importlib.util.find_spec("libucx")
    return os.path.join(os.path.dirname(spec.origin), "lib", "libucp.so.0")


def library_version(path: str) -> str:
    """UCX's own version string of the libucp at `path` (ucp_get_version_string), read in a
    separate process so that UCX's memory hooks never enter this one."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.ucp_get_version_string.restype = ctypes.c_char_p; print(lib.ucp_get_version_string().decode())")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"cannot read the version of {path}: {out.stderr[-2000:]}"
    return out.stdout.strip()


def transports_of(rank, world):
    comm = plexus.distributed._state.world.comm
    return [comm.transport_to(p) if p != rank else "self" for p in range(world)]


# ---------------------------------------------------------------------------------------------
# (a) The collective matrix: one launch per (world, UCX_TLS), every check inside it.

PRIME = 1009
LARGE = (3 << 20) // 4 + 7  # float32 elements: 3 MiB + 7 elements, several chunks on the wire
SMALL = [0, 1, PRIME]
LARGE_REDUCING = [("float32", "SUM"), ("float32", "MAX"), ("float32", "AVG"), ("bfloat16", "SUM"),
                  ("float64", "PRODUCT"), ("int64", "MIN"), ("uint8", "BXOR")]


def _reducing(prefix, world):
    """(case, dtype, op, count): every dtype and op at the small counts, some at the large one."""
    for dtype in ref.DTYPES:
        for op in ref.OPS:
            if ref.valid(op, dtype):
                for count in SMALL:
                    yield f"{prefix}/{dtype}/{op}/{count}", dtype, op, count
    for dtype, op in LARGE_REDUCING:
        yield f"{prefix}/{dtype}/{op}/{LARGE}", dtype, op, LARGE


def _plain(prefix, large):
    """(case, dtype, count): every dtype at the small counts, three of them at `large`."""
    for dtype in ref.DTYPES:
        for count in SMALL:
            yield f"{prefix}/{dtype}/{count}", dtype, count
    for dtype in ("float32", "int8", "float64"):
        yield f"{prefix}/{dtype}/{large}", dtype, large


def checks(rank, world):
    """test_collectives' checks of every collective over this file's counts, by name."""
    import test_collectives as tc

    return {
        "all_reduce": lambda: tc.check_all_reduce(rank, world, _reducing("all_reduce", world)),
        "all_gather": lambda: tc.check_all_gather(rank, world, _plain("all_gather", LARGE // world)),
        "reduce_scatter": lambda: tc.check_reduce_scatter(rank, world, _reducing("reduce_scatter", world)),
        "broadcast": lambda: tc.check_broadcast(rank, world, _plain("broadcast", LARGE)),
        "reduce": lambda: tc.check_reduce(rank, world, _reducing("reduce", world)),
        "gather": lambda: tc.check_gather(rank, world, _plain("gather", LARGE // world)),
        "scatter": lambda: tc.check_scatter(rank, world, _plain("scatter", LARGE // world)),
        "all_to_all": lambda: tc.check_all_to_all(rank, world, _plain("all_to_all", LARGE // (world * world))),
        "point_to_point": lambda: check_point_to_point(rank, world),
        "barrier": lambda: tc.check_barrier(rank, world),
    }


def check_point_to_point(rank, world):
    """A ring of irecv/isend from 0 bytes to several chunks (test_p2p's), tags matched in order
    per (peer, tag) between ranks 0 and 1, and receives from any source on rank 0."""
    if world == 1:
        return 1
    from test_p2p import ring_exchange, tags_match_in_order

    assert ring_exchange(rank, world)
    if rank in (0, 1):
        seen = tags_match_in_order(rank, world)
        assert rank == 0 or seen == [30, 31, 70, 71], seen
    plexus.barrier()
    if rank == 0:
        senders = set()
        for _ in range(world - 1):
            x = np.zeros(PRIME, dtype=np.int32)
            src = plexus.recv(x, tag=5)
            assert np.array_equal(x, np.arange(PRIME, dtype=np.int32) * src), src
            senders.add(src)
        assert senders == set(range(1, world)), senders
    else:
        plexus.send(np.arange(PRIME, dtype=np.int32) * rank, dst=0, tag=5)
    return 3


def matrix(rank, world):
    t0 = time.monotonic()
    checked = {name: check() for name, check in checks(rank, world).items()}
    return transports_of(rank, world), checked, time.monotonic() - t0


MATRIX = [(1, "tcp")] + [(w, t) for w in (2, 3, 4) for t in TLS]


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("world, tls", MATRIX, ids=[f"{w}ranks-{t}" for w, t in MATRIX])
def test_collectives_match_numpy_over_ucx(world, tls):
    results = run_ranks(world, matrix, timeout=TIMEOUT, env=ucx_env(tls))
    for rank, (transports, checked, _) in enumerate(results):
        assert transports == ["self" if p == rank else "ucx" for p in range(world)], (rank, transports)
        assert checked == results[0][1] and all(n > 0 for n in checked.values()), (rank, checked)
    print(f"\n{world} ranks over ucx ({TLS[tls]}): {sum(results[0][1].values())} checks per rank in "
          f"{max(r[2] for r in results):.1f} s")


# ---------------------------------------------------------------------------------------------
# (b) Which transport each peer gets; (c) a missing or broken library.

def join_and_report(rank, world):
    """As test_transports.join_and_report, plus whether libucp is mapped into this process while
    the group is up: ("ok", the transport to each peer, loaded, whether the tuner costs the hosts'
    links as UCX's) or (exception type, message, loaded)."""
    from plexus import _C

    store = _C.TcpStoreClient("127.0.0.1", int(os.environ["STORE_PORT"]), 30.0)
    try:
        plexus.init_process_group(store=store, rank=rank, world_size=world, timeout=30)
    except Exception as e:  # noqa: BLE001 - the parent asserts on what came back
        return type(e).__name__, str(e), _ucx_loaded()
    try:
        x = np.full(PRIME, rank + 1, dtype=np.float32)
        plexus.all_reduce(x)
        assert np.all(x == world * (world + 1) // 2), x[:4]
        return "ok", transports_of(rank, world), _ucx_loaded(), plexus.distributed._state.world.comm.shape["ucx"]
    finally:
        plexus.destroy_process_group()


def _ucx_loaded() -> bool:
    with open("/proc/self/maps") as f:
        return "libucp.so" in f.read()


def join(world, env, rank_env=None):
    """Runs join_and_report on `world` ranks. The store lives in this process, so that a rank
    failing early cannot take it away from the others."""
    server = _C.TcpStoreServer("127.0.0.1", 0)
    return run_ranks(world, join_and_report, env=dict(env, STORE_PORT=str(server.port)), join_group=False,
                     rank_env=rank_env, timeout=TIMEOUT)


def _rows(want):
    return [["self" if p == r else t for p, t in enumerate(row)] for r, row in enumerate(want)]


ALL_UCX = _rows([["ucx"] * 3] * 3)


@pytest.mark.parametrize("env, want", [
    # ucx alone: every pair, also those of one host.
    ({"PLEXUS_TRANSPORTS": "ucx"}, ALL_UCX),
    # shm first within a host, ucx across.
    ({"PLEXUS_TRANSPORTS": "shm,ucx"}, _rows([["", "shm", "ucx"], ["shm", "", "ucx"], ["ucx", "ucx", ""]])),
    # The table's order, not the setting's, is the preference: ucx before tcp.
    ({"PLEXUS_TRANSPORTS": "tcp,ucx"}, ALL_UCX),
    ({"PLEXUS_TRANSPORTS": "ucx,tcp"}, ALL_UCX),
], ids=["ucx", "shm,ucx", "tcp,ucx", "ucx,tcp"])
def test_each_peer_gets_the_first_transport_that_connects_the_pair(env, want):
    got = join(3, dict(env, UCX_TLS=TLS["tcp"], PLEXUS_HOST_ID_BY_RANK="a,a,b"))
    assert [g[:2] for g in got] == [("ok", row) for row in want], got
    assert all(g[3] for g in got), f"every pair across hosts is on ucx: the tuner uses its link ({got})"


DEFAULT_ROWS = _rows([["", "shm", "tcp"], ["shm", "", "tcp"], ["tcp", "tcp", ""]])


def test_by_default_ucx_without_infiniband_is_not_used():
    """PLEXUS_TRANSPORTS unset: across hosts UCX runs only where it reports InfiniBand/RoCE,
    which the wheel (and this machine) lacks: shm within a host, tcp across."""
    got = join(3, {"PLEXUS_HOST_ID_BY_RANK": "a,a,b"})
    assert [g[:2] for g in got] == [("ok", row) for row in DEFAULT_ROWS], got
    assert not any(g[3] for g in got), f"hosts joined by tcp are costed as the network link: {got}"


def test_by_default_ranks_of_one_host_do_not_even_load_ucx():
    """PLEXUS_TRANSPORTS unset and every rank on one host: shared memory, and libucp is never
    mapped into the ranks (UCX loads only when a pair on different hosts might use it)."""
    got = join(3, {})
    assert [g[:2] for g in got] == [("ok", row) for row in _rows([["shm"] * 3] * 3)], got
    assert not any(g[2] for g in got), f"libucp was loaded by default: {got}"


def _broken_libraries(tmp_path):
    """(label, PLEXUS_UCX_LIBRARY, text the reason must contain)."""
    garbage = tmp_path / "libucp.so.0"
    garbage.write_text("not a shared library\n")
    return [("missing", "/nonexistent/libucp.so.0", "/nonexistent/libucp.so.0"),
            ("not a library", str(garbage), str(garbage))]


def _ucx_warnings(text, marker):
    return [line for line in text.splitlines() if "ucx" in line.lower() and marker in line]


@pytest.mark.parametrize("which", [0, 1], ids=["missing", "not-a-library"])
def test_a_missing_or_broken_library_warns_once_per_rank_and_falls_back_to_tcp(which, tmp_path, capfd):
    label, path, marker = _broken_libraries(tmp_path)[which]
    capfd.readouterr()
    got = join(3, {"PLEXUS_TRANSPORTS": "ucx,tcp", "PLEXUS_UCX_LIBRARY": path, "UCX_TLS": TLS["tcp"],
                   "PLEXUS_HOST_ID_BY_RANK": "a,a,b"})
    err = capfd.readouterr().err
    assert [g[:2] for g in got] == [("ok", row) for row in _rows([["tcp"] * 3] * 3)], got
    warnings = _ucx_warnings(err, marker)
    # One warning per rank, naming ucx and the reason (the path dlopen could not load).
    assert len(warnings) == 3, f"{label} library: want one warning per rank, got:\n{err[-4000:]}"


@pytest.mark.parametrize("which", [0, 1], ids=["missing", "not-a-library"])
def test_ucx_alone_without_a_library_is_an_error_on_every_rank(which, tmp_path):
    label, path, marker = _broken_libraries(tmp_path)[which]
    got = join(2, {"PLEXUS_TRANSPORTS": "ucx", "PLEXUS_UCX_LIBRARY": path, "UCX_TLS": TLS["tcp"]})
    for kind, msg, _ in got:
        assert kind != "ok", f"{label} library: the group came up over {msg}"
        assert "PLEXUS_TRANSPORTS=ucx, but" in msg and marker in msg, (kind, msg)


# ---------------------------------------------------------------------------------------------
# (d) Ranks that load different UCX versions.

def _major_minor(version: str):
    return tuple(version.split(".")[:2])


def test_ranks_with_different_ucx_versions_all_raise_naming_both():
    if not os.path.exists(OLD_UCX):
        pytest.skip(f"no older UCX at {OLD_UCX} (.ci/run unpacks libucx-cu12==1.19.0 there)")
    new_lib = wheel_library()
    old, new = library_version(OLD_UCX), library_version(new_lib)
    if _major_minor(old) == _major_minor(new):
        pytest.skip(f"the older UCX at {OLD_UCX} is {old}, the same major.minor as the wheel's {new}")
    # Rank 1 takes the installed wheel through the usual search, unless a system libucp.so.0
    # would come first: then it is named.
    system = ctypes.util.find_library("ucp")
    got = join(2, ucx_env("tcp"), rank_env=[{"PLEXUS_UCX_LIBRARY": OLD_UCX},
                                            {"PLEXUS_UCX_LIBRARY": new_lib} if system else {}])
    for rank, (kind, msg, _) in enumerate(got):
        assert kind != "ok", f"rank {rank} came up with UCX {old} and {new} mixed: {msg}"
        assert old in msg and new in msg, f"rank {rank} does not name both versions ({old}, {new}): {kind}: {msg}"


# ---------------------------------------------------------------------------------------------
# (e) A killed rank: its peers raise over ucx as they do over tcp (test_kill_matrix's check).

KILLS = [("between collectives", "tcp"), ("all_reduce ring", "tcp"), ("all_reduce ring", "shm")]


@pytest.mark.parametrize("point, tls", KILLS, ids=[f"{p}-{t}" for p, t in KILLS])
def test_a_killed_rank_raises_on_every_survivor(point, tls, tmp_path):
    import test_kill_matrix as km

    env = dict(km.POINTS[point][1], PLEXUS_TIMEOUT=str(km.TIMEOUT), **ucx_env(tls))
    km.check_survivors_raise(point, f"ucx ({TLS[tls]})", env, tmp_path)


# ---------------------------------------------------------------------------------------------
# (f) torch tensors: UCX hooks mmap/munmap; torch's allocator must still get right results.

def torch_tensors(rank, world, init_method, plexus_init_method):
    import torch
    import torch.distributed as dist

    dist.init_process_group("plexus", init_method=init_method, rank=rank, world_size=world)
    assert dist.get_backend() == "plexus"
    pg = dist.distributed_c10d._get_default_group()  # noqa: SLF001 - a PlexusProcessGroup
    transports = [pg.comm.transport_to(p) for p in range(world) if p != rank]
    checked = 0
    # Buffers are freed and allocated again every round, large ones by mmap/munmap, so a new
    # tensor often sits where a freed one was: whatever UCX cached about the old one must go.
    for i in range(24):
        n = [1, PRIME, 1 << 16, LARGE, 2 * LARGE + 1][i % 5]
        dtype = [torch.float32, torch.bfloat16, torch.int64, torch.float64][i % 4]
        x = torch.full((n,), float(rank + 1 + i % 3), dtype=dtype)
        dist.all_reduce(x)
        want = sum(r + 1 + i % 3 for r in range(world))
        assert torch.equal(x, torch.full((n,), float(want), dtype=dtype)), (i, n, dtype, x[:4])
        out = torch.empty(n * world, dtype=dtype)
        dist.all_gather_into_tensor(out, torch.arange(n, dtype=dtype) % 7 + rank)
        want = torch.cat([torch.arange(n, dtype=dtype) % 7 + r for r in range(world)])
        assert torch.equal(out, want), (i, n, dtype)
        y = torch.arange(n, dtype=torch.float32) if rank == i % world else torch.zeros(n)
        dist.broadcast(y, src=i % world)
        assert torch.equal(y, torch.arange(n, dtype=torch.float32)), (i, n)
        del x, out, y
        checked += 3
    # The numpy-shaped API takes torch CPU tensors too, on a second group over ucx beside the
    # torch one.
    plexus.init_process_group(init_method=plexus_init_method, rank=rank, world_size=world)
    for i in range(4):
        z = torch.ones(LARGE + i) * (rank + 1)
        plexus.all_reduce(z, op=plexus.ReduceOp.MAX)
        assert torch.equal(z, torch.full((LARGE + i,), float(world))), z[:4]
        checked += 1
    transports += transports_of(rank, world)
    plexus.destroy_process_group()
    dist.destroy_process_group()
    return checked, transports


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("tls", list(TLS))
def test_torch_tensors_over_ucx(tls, tmp_path):
    pytest.importorskip("torch")
    results = run_ranks(3, torch_tensors, f"file://{tmp_path}/rdv", f"file://{tmp_path}/rdv2", env=ucx_env(tls),
                        join_group=False, timeout=TIMEOUT)
    for rank, (checked, transports) in enumerate(results):
        assert checked == results[0][0] > 0, results
        assert transports == ["ucx", "ucx"] + ["self" if p == rank else "ucx" for p in range(3)], (rank, transports)


@pytest.mark.timeout(TIMEOUT + 60)
def test_torch_backend_over_ucx_matches_gloo(tmp_path):
    """Every torch.distributed collective on the plexus group, over ucx, equals gloo's (the
    check of test_torch_backend, on 2 ranks)."""
    pytest.importorskip("torch")
    import torch_workers

    checks = run_ranks(2, torch_workers.collectives, f"file://{tmp_path}/rdv", join_group=False, timeout=TIMEOUT,
                       env=dict(ucx_env("tcp"), PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert all(c == checks[0] for c in checks), checks


# ---------------------------------------------------------------------------------------------
# (g) An idle communicator over ucx does not spin.

IDLE_SECONDS = 3.0


def idle_cpu(rank, world):
    import resource

    x = np.ones(PRIME, dtype=np.float32)
    plexus.all_reduce(x)
    assert np.all(x == world)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(IDLE_SECONDS)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    plexus.barrier()
    return cpu, transports_of(rank, world)


@pytest.mark.parametrize("tls", list(TLS))
def test_an_idle_communicator_uses_little_cpu(tls):
    results = run_ranks(2, idle_cpu, env=ucx_env(tls), timeout=TIMEOUT)
    for rank, (cpu, transports) in enumerate(results):
        assert "ucx" in transports, transports
        # Every thread of the process counts: a spinning progress thread would take ~3 s.
        assert cpu < 0.3, f"rank {rank} used {cpu:.2f} s of CPU over {IDLE_SECONDS} s of idling"


# ---------------------------------------------------------------------------------------------
# A fork()ed child cannot use its parent's UCX worker: it gets a clear error, not a hang, and the
# parent's group goes on.

@pytest.mark.timeout(TIMEOUT + 60)
def test_a_forked_child_using_a_ucx_communicator_gets_a_clear_error():
    report = run_ranks(2, _fork_and_report, "all_reduce", env=ucx_env("tcp", PLEXUS_TIMEOUT="30"), timeout=TIMEOUT)[0]
    check_child_raised(report, "all_reduce")