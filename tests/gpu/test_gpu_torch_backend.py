"""The "plexus" torch.distributed backend on CUDA tensors (through the collective layer and
plexus.device), on 2 and 4 ranks sharing GPU 0: every collective gives on CUDA tensors what it gives on the same values as
CPU tensors (the CPU path is checked against gloo in tests/test_torch_backend.py); all_reduce,
all_gather_into_tensor and reduce_scatter_tensor go through CUDA IPC; DDP on a CUDA model
trains as one process on the whole batch does."""

from __future__ import annotations

import os
import tempfile

import pytest

from launch import run_ranks

pytestmark = pytest.mark.torch_cuda


def _data(torch, rank, n, dtype, salt=0):
    base = (torch.arange(n, dtype=torch.int64) * 7 + salt) % 5 + 1 + rank
    if dtype.is_complex:
        return torch.complex(base.float(), -base.float()).to(dtype)
    return base.to(dtype)


def _collectives(rank, world, init_method):
    import torch
    import torch.distributed as dist
    from torch.testing import assert_close

    from plexus import device

    torch.cuda.set_device(0)
    dist.init_process_group("plexus", init_method=init_method, rank=rank, world_size=world)
    RT = dist.ReduceOp
    cuda = torch.device("cuda", 0)

    def same(fn, what):
        want = fn(torch.device("cpu"))
        got = fn(cuda)
        want, got = (x if isinstance(x, (list, tuple)) else [x] for x in (want, got))
        for g, w in zip(got, want):
            assert g.is_cuda, what
            assert_close(g.cpu(), w, rtol=1e-2 if w.dtype in (torch.float16, torch.bfloat16) else 1e-6, atol=1e-5,
                         msg=lambda m: f"{what}: {m}")

    n = 1003
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.complex64):
        ops = [RT.SUM] + ([RT.MAX, RT.AVG] if dtype.is_floating_point else [RT.MAX] if not dtype.is_complex else [])
        for op in ops:
            def all_reduce(dev, dtype=dtype, op=op):
                t = _data(torch, rank, n, dtype).to(dev)
                dist.all_reduce(t, op=op)
                return t
            same(all_reduce, f"all_reduce {dtype} {op}")

        def gathers(dev, dtype=dtype):
            x = _data(torch, rank, n, dtype).to(dev)
            whole = torch.zeros(n * world, dtype=dtype, device=dev)
            dist.all_gather_into_tensor(whole, x)
            in_place = torch.zeros(n * world, dtype=dtype, device=dev)
            in_place[rank * n:(rank + 1) * n] = x
            dist.all_gather_into_tensor(in_place, in_place[rank * n:(rank + 1) * n])
            lst = [torch.zeros(n, dtype=dtype, device=dev) for _ in range(world)]
            dist.all_gather(lst, x)
            return [whole, in_place] + lst
        same(gathers, f"all_gather {dtype}")

        def scatters(dev, dtype=dtype):
            x = _data(torch, rank, n * world, dtype, salt=3).to(dev)
            out = torch.zeros(n, dtype=dtype, device=dev)
            dist.reduce_scatter_tensor(out, x)
            y = x.clone()
            dist.reduce_scatter_tensor(y[rank * n:(rank + 1) * n], y)
            lst_out = torch.zeros(n, dtype=dtype, device=dev)
            dist.reduce_scatter(lst_out, list(x.chunk(world)))
            return [out, y[rank * n:(rank + 1) * n], lst_out]
        same(scatters, f"reduce_scatter {dtype}")

    def others(dev):
        b = _data(torch, rank, 77, torch.float32).to(dev)
        dist.broadcast(b, src=world - 1)
        r = _data(torch, rank, 77, torch.float32).to(dev)
        dist.reduce(r, dst=0)
        a2a = torch.zeros(world * 5, dtype=torch.int32, device=dev)
        dist.all_to_all_single(a2a, (torch.arange(world * 5, dtype=torch.int32) + 100 * rank).to(dev))
        got = torch.zeros(9, device=dev)
        if rank % 2 == 0 and rank + 1 < world:
            dist.send(torch.full((9,), float(rank), device=dev), dst=rank + 1)
        elif rank % 2 == 1:
            dist.recv(got, src=rank - 1)
        return [b, r if rank == 0 else torch.zeros(0, device=dev), a2a, got]
    same(others, "broadcast / reduce / all_to_all_single / send-recv")

    # Async: wait() orders the current stream; the future completes once the GPU is done.
    t = torch.full((1 << 20,), rank + 1.0, device=cuda)
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    assert t[0].item() == world * (world + 1) / 2
    fut = dist.all_reduce(t, async_op=True).get_future()
    fut.wait()
    assert work.is_completed()
    assert t[-1].item() == world * world * (world + 1) / 2
    paths = dict(device.PATHS)
    dist.destroy_process_group()
    return paths


def _ddp(rank, world, init_method):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.testing import assert_close

    torch.cuda.set_device(0)
    dist.init_process_group("plexus", init_method=init_method, rank=rank, world_size=world)
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).cuda()
    model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).cuda(),
                device_ids=[0])
    model.module.load_state_dict(reference.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(world * 8, 32, generator=gen).cuda()
        y = torch.randn(world * 8, 4, generator=gen).cuda()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[rank * 8:(rank + 1) * 8]), y[rank * 8:(rank + 1) * 8]).backward()
        opt.step()
        ref_opt.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        ref_opt.step()
    for p, q in zip(model.module.parameters(), reference.parameters()):
        assert_close(p, q, rtol=1e-4, atol=1e-5)
    dist.destroy_process_group()
    return True


def _init_method():
    fd, path = tempfile.mkstemp(prefix="plexus-gpu-torch-")
    os.close(fd)
    os.remove(path)
    return f"file://{path}"


@pytest.mark.parametrize("world", [2, 4])
def test_torch_backend_on_cuda_tensors(world):
    for paths in run_ranks(world, _collectives, _init_method(), timeout=600, join_group=False):
        assert paths.get("native", 0) > 0 and not [p for p in paths if p.startswith("staged")], paths


def test_ddp_on_cuda_trains_like_one_process():
    assert run_ranks(2, _ddp, _init_method(), timeout=600, join_group=False) == [True, True]
