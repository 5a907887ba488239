"""The native device path on a real GPU (ranks share GPU 0; run under MPS for speed, correct
without it): both all_reduce programs and chunks of a small scratch against numpy, CUDA graph
capture and replay (cupy through plexus, torch.cuda.graph through the torch backend), and what
the device reports: a peer that never comes (deadline), mismatched calls. Errors found on the
GPU surface at the rank's next call (or wait), as NCCL's asynchronous errors do."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest

import plexus
from launch import run_ranks


def _programs(rank, world):
    import cupy as cp

    from plexus import device

    cp.cuda.Device(0).use()
    checked = 0
    for dtype in (np.float32, np.float16, np.int32):
        for n in (0, 1, 7, 4099, 1 << 20):
            base = (np.arange(n) % 13).astype(dtype)
            x = cp.asarray(base + rank)
            plexus.all_reduce(x)
            want = (base.astype(np.float64) * world + sum(range(world))).astype(dtype)
            np.testing.assert_array_equal(cp.asnumpy(x), want, err_msg=f"all_reduce {dtype} {n}")
            out = cp.zeros(n * world, dtype)
            plexus.all_gather_into_tensor(out, cp.asarray(base + rank))
            np.testing.assert_array_equal(cp.asnumpy(out), np.concatenate([base + r for r in range(world)]))
            src = cp.asarray(np.tile(base, world) + rank)
            dst = cp.zeros(n, dtype)
            plexus.reduce_scatter_tensor(dst, src)
            np.testing.assert_array_equal(cp.asnumpy(dst), want)
            checked += 3
    assert set(device.PATHS) == {"native"}, device.PATHS
    return checked


@pytest.mark.cupy
@pytest.mark.parametrize("world,env", [(2, {"PLEXUS_DEVICE_ALGO": "oneshot"}), (2, {"PLEXUS_DEVICE_ALGO": "twoshot"}),
                                       (3, {"PLEXUS_DEVICE_SCRATCH": "4096"}), (4, {})])
def test_programs_and_chunks_match_numpy(world, env):
    res = run_ranks(world, _programs, env=env, timeout=300)
    assert len(set(res)) == 1 and res[0] > 0


def _cupy_graph(rank, world):
    import cupy as cp

    cp.cuda.Device(0).use()
    x = cp.zeros(1000, cp.float32)
    plexus.all_reduce(x)  # the first call sets the workspaces up: not inside a capture
    # all_to_all with uneven blocks: its kernel shares the sizes, so it is captured like the rest
    ins = [cp.zeros(3 + rank + j, cp.int32) for j in range(world)]
    outs = [cp.zeros(3 + q + rank, cp.int32) for q in range(world)]
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        plexus.all_reduce(x)
        plexus.all_reduce(x, op=plexus.ReduceOp.MAX)
        plexus.all_to_all(outs, ins)
        g = s.end_capture()
    for i in range(5):
        with s:
            x[...] = rank + i
            for j in range(world):
                ins[j][...] = 100 * rank + 10 * j + i
        g.launch(s)
        s.synchronize()
        np.testing.assert_array_equal(cp.asnumpy(x), np.full(1000, sum(r + i for r in range(world)), np.float32))
        for q in range(world):
            np.testing.assert_array_equal(cp.asnumpy(outs[q]), np.full(3 + q + rank, 100 * q + 10 * rank + i, np.int32))
    return True


@pytest.mark.cupy
@pytest.mark.parametrize("world,env", [(2, {}), (3, {}), (2, {"PLEXUS_DEVICE_MAPPED_MIN": "1K"})])
def test_cupy_graph_capture_replays(world, env):
    """(With arrays mapped from 1 KiB: the first call maps them, the captured ones are staged.)"""
    assert run_ranks(world, _cupy_graph, env=env, timeout=300) == [True] * world


def _mapped(rank, world, library):
    """Large all_reduces on arrays mapped for the call, in place and out of place, at offsets
    within their allocations, on cupy arrays or torch tensors."""
    from plexus.device import mapped

    if library == "cupy":
        import cupy as xp

        xp.cuda.Device(0).use()
        to_host, dtypes = xp.asnumpy, (np.float32, np.float16, np.int32)
    else:
        import torch

        torch.cuda.set_device(0)
        codes = {np.float32: torch.float32, np.float16: torch.float16, np.int32: torch.int32}
        to_host, dtypes = (lambda t: t.cpu().numpy()), tuple(codes)
    for dtype in dtypes:
        for n in (16411, (1 << 20) + 3):  # from 32 KiB on (float16 too), counts that do not divide
            base = (np.arange(n + 5) % 11).astype(dtype)
            for i in range(3):
                host = base + rank + i
                x = xp.asarray(host) if library == "cupy" else torch.from_numpy(host).cuda()
                view = x[5:]  # not at its allocation's start
                plexus.all_reduce(view)
                want = (base[5:].astype(np.float64) * world + sum(r + i for r in range(world))).astype(dtype)
                np.testing.assert_array_equal(to_host(view), want, err_msg=f"{library} {dtype} {n} in place")
                out = xp.zeros(n, dtype) if library == "cupy" else torch.zeros(n, dtype=codes[dtype], device="cuda")
                plexus.all_reduce(x[:n], op=plexus.ReduceOp.MAX, out=out)
                np.testing.assert_array_equal(to_host(out), (base[:n] + world - 1 + i).astype(dtype))
    comm = plexus.distributed._world("test")._native.comm  # noqa: SLF001
    assert not mapped.STAGED, mapped.STAGED
    return comm.mapped_calls


@pytest.mark.parametrize("library", [pytest.param("cupy", marks=pytest.mark.cupy),
                                     pytest.param("torch", marks=pytest.mark.torch_cuda)])
@pytest.mark.parametrize("world", [2, 3])
def test_large_all_reduces_run_on_mapped_arrays(world, library):
    res = run_ranks(world, _mapped, library, env={"PLEXUS_DEVICE_MAPPED_MIN": "32K"}, timeout=300)
    assert res == [36] * world


def _torch_graph(rank, world, init_method):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("plexus", init_method=init_method, rank=rank, world_size=world)
    t = torch.zeros(4096, device="cuda")
    dist.all_reduce(t)  # set up outside the capture
    u = torch.zeros(300, device="cuda")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            dist.all_reduce(t)
            dist.all_reduce(u, op=dist.ReduceOp.MAX)
    for i in range(4):
        t.fill_(rank * 10 + i)
        u.fill_(rank + 1)
        g.replay()
        torch.cuda.synchronize()
        assert t[0].item() == t[-1].item() == sum(r * 10 + i for r in range(world)), (i, t[0].item())
        assert u.sum().item() == 300 * world
    dist.destroy_process_group()
    return True


@pytest.mark.torch_cuda
def test_torch_cuda_graph_replays_backend_calls():
    fd, path = tempfile.mkstemp(prefix="plexus-gpu-graph-")
    os.close(fd)
    os.remove(path)
    assert run_ranks(2, _torch_graph, f"file://{path}", timeout=300, join_group=False) == [True, True]


def _absent(rank, world):
    import cupy as cp

    cp.cuda.Device(0).use()
    x = cp.ones(8, cp.float32)
    plexus.all_reduce(x)
    cp.cuda.Device(0).synchronize()
    if rank == 1:
        time.sleep(5)
        plexus.all_reduce(x)  # the kernel finds rank 0's note in its pad and stops at once
        cp.cuda.Device(0).synchronize()
        with pytest.raises(plexus.PeerError, match="rank 0 failed a device collective"):
            plexus.all_reduce(x)
        return "told"
    t0 = time.monotonic()
    plexus.all_reduce(x)  # enqueued; the kernel gives up at the deadline
    cp.cuda.Device(0).synchronize()
    waited = time.monotonic() - t0
    with pytest.raises(plexus.CollectiveTimeout, match="waited on the GPU for rank 1"):
        plexus.all_reduce(x)
    return waited < 10


@pytest.mark.cupy
def test_the_gpu_gives_up_on_an_absent_peer():
    assert run_ranks(2, _absent, env={"PLEXUS_TIMEOUT": "2"}, timeout=120) == [True, "told"]


def _mismatch(rank, world):
    import cupy as cp

    cp.cuda.Device(0).use()
    plexus.all_reduce(cp.ones(4, cp.float32))
    plexus.all_reduce(cp.ones(4 + rank, cp.float32))
    cp.cuda.Device(0).synchronize()
    with pytest.raises(plexus.PlexusError, match=r"mismatched device collectives: rank \d called all_reduce"):
        plexus.all_reduce(cp.ones(4, cp.float32))
    return True


@pytest.mark.cupy
def test_mismatched_calls_are_reported_by_the_device():
    assert run_ranks(2, _mismatch, env={"PLEXUS_TIMEOUT": "20"}, timeout=120) == [True, True]


def _rooted_and_all_to_all(rank, world):
    """gather, scatter and all_to_all (uneven blocks, several rounds of the scratch) on the native path."""
    import cupy as cp

    from plexus import device

    cp.cuda.Device(0).use()
    device.PATHS.clear()
    for n in (0, 5, (1 << 20) + 3):
        blocks = [np.arange(n, dtype=np.float32) + 1000 * q for q in range(world)]
        outs = [cp.zeros(n, cp.float32) for _ in range(world)] if rank == 0 else None
        plexus.gather(cp.asarray(blocks[rank]), outs, dst=0)
        if rank == 0:
            for q in range(world):
                np.testing.assert_array_equal(cp.asnumpy(outs[q]), blocks[q])
        out = cp.zeros(n, cp.float32)
        plexus.scatter(out, [cp.asarray(b) for b in blocks] if rank == world - 1 else None, src=world - 1)
        np.testing.assert_array_equal(cp.asnumpy(out), blocks[rank])
        size = {(i, j): (n + 3 * i + 5 * j) % (n + 7) for i in range(world) for j in range(world)}
        ins = [cp.full(size[(rank, j)], rank * 10 + j, cp.int32) for j in range(world)]
        got = [cp.zeros(size[(j, rank)], cp.int32) for j in range(world)]
        plexus.all_to_all(got, ins)
        for j in range(world):
            np.testing.assert_array_equal(cp.asnumpy(got[j]), np.full(size[(j, rank)], j * 10 + rank, np.int32))
    assert set(device.PATHS) == {"native"}, device.PATHS
    return True


@pytest.mark.cupy
@pytest.mark.parametrize("world,env", [(2, {}), (3, {}), (3, {"PLEXUS_DEVICE_SCRATCH": "4096"})])
def test_gather_scatter_and_all_to_all_run_natively(world, env):
    """(A 4 KiB scratch: many launches (all_to_all: rounds) per call, each scratch set used again and again.)"""
    assert run_ranks(world, _rooted_and_all_to_all, env=env, timeout=300) == [True] * world
