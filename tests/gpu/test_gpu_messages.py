"""Native device messages on a real GPU (ranks share GPU 0; under MPS for speed): send/recv of
cupy arrays and torch tensors through the inboxes of the native path, on lanes (CUDA streams of
the communicator) beside the caller's stream. Sizes from 0 to many inbox slots against numpy,
both orders of an exchange, a run of messages in one direction, capture in a CUDA graph, and
torch's batch_isend_irecv through the backend."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import plexus
from launch import run_ranks


def _exchange(rank, world):
    import cupy as cp

    from plexus import device

    cp.cuda.Device(0).use()
    plexus.all_reduce(cp.ones(4, cp.float32))  # the native path, set up by a collective
    to, frm = (rank + 1) % world, (rank - 1) % world
    device.PATHS.clear()
    for i, dtype in enumerate((np.float32, np.float16, np.int64, np.uint8)):
        for n in (0, 1, 4099, 3 << 20):
            base = (np.arange(n) % 251).astype(dtype)
            x, y = cp.asarray(base + rank), cp.zeros(n, dtype)
            if (i + n) % 2:
                works = [plexus.isend(x, to), plexus.irecv(y, frm)]
            else:
                works = [plexus.irecv(y, frm), plexus.isend(x, to)]
            for w in works:
                w.wait()
            np.testing.assert_array_equal(cp.asnumpy(y), base + frm, err_msg=f"{dtype} x {n} from {frm}")
    # 30 messages to the next rank before it receives any: they wait on the lane, in order
    sent = [plexus.isend(cp.full(1000 + j, rank * 100 + j, cp.int32), to) for j in range(30)]
    outs = [cp.zeros(1000 + j, cp.int32) for j in range(30)]
    for j, out in enumerate(outs):
        plexus.recv(out, frm)
    for w in sent:
        w.wait()
    cp.cuda.Device(0).synchronize()
    for j, out in enumerate(outs):
        assert (cp.asnumpy(out) == frm * 100 + j).all(), j
    return sorted(device.PATHS)


@pytest.mark.cupy
@pytest.mark.parametrize("world,env", [(2, {}), (3, {}), (2, {"PLEXUS_DEVICE_SCRATCH": "4096"})])
def test_messages_run_natively_and_match_numpy(world, env):
    assert run_ranks(world, _exchange, env=env, timeout=300) == [["native"]] * world


def _graph(rank, world):
    import cupy as cp

    cp.cuda.Device(0).use()
    x, y = cp.zeros(5000, cp.float32), cp.zeros(5000, cp.float32)
    plexus.all_reduce(x)
    to, frm = (rank + 1) % world, (rank - 1) % world
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        plexus.send(x, to)  # under capture the lane joins the stream at once
        plexus.recv(y, frm)
        g = s.end_capture()
    for i in range(4):
        with s:
            x[...] = rank * 10 + i
        g.launch(s)
        s.synchronize()
        np.testing.assert_array_equal(cp.asnumpy(y), np.full(5000, frm * 10 + i, np.float32))
    return True


@pytest.mark.cupy
def test_messages_captured_in_a_cuda_graph_replay():
    assert run_ranks(2, _graph, timeout=300) == [True, True]


def _torch_batch(rank, world, init_method):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(0)
    dist.init_process_group("plexus", init_method=init_method, rank=rank, world_size=world)
    dist.all_reduce(torch.ones(4, device="cuda"))
    to, frm = (rank + 1) % world, (rank - 1) % world
    x = torch.arange(300_000, dtype=torch.float32, device="cuda") + rank
    y = torch.zeros_like(x)
    ops = [dist.P2POp(dist.irecv, y, frm), dist.P2POp(dist.isend, x, to)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    torch.cuda.synchronize()
    ok = torch.equal(y, torch.arange(300_000, dtype=torch.float32, device="cuda") + frm)
    dist.destroy_process_group()
    return ok


@pytest.mark.torch_cuda
def test_torch_batch_isend_irecv_through_the_backend():
    fd, path = tempfile.mkstemp(prefix="plexus-gpu-p2p-")
    os.close(fd)
    os.remove(path)
    assert run_ranks(2, _torch_batch, f"file://{path}", timeout=300, join_group=False) == [True, True]
