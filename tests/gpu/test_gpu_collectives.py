"""Every collective of the public API on cupy arrays and torch CUDA tensors, on 1, 2 and 4 ranks
sharing GPU 0, checked against numpy; plus stream order (work the caller queued before a call is
seen by it, work queued after sees its result) and async_op. all_reduce, all_gather (both forms),
reduce_scatter_tensor, broadcast and reduce run as native kernels (plexus.device.native;
asserted), the others are staged through host memory (plexus.device.staging)."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
import reference as ref
from launch import run_ranks

COUNTS = [1, 1000, 65539]


class CupyLib:
    name = "cupy"
    dtypes = [d for d in ref.DTYPES if d != "bfloat16"]  # cupy has no bfloat16

    def __init__(self):
        import cupy

        self.cp = cupy
        cupy.cuda.Device(0).use()

    def dev(self, a):
        return self.cp.asarray(a)

    def host(self, x):
        return self.cp.asnumpy(x)  # on the current stream, waited for

    def stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def on(self, s):
        return s

    def sync(self, s):
        s.synchronize()


class TorchLib:
    name = "torch"
    dtypes = ref.DTYPES

    def __init__(self):
        import torch

        self.torch = torch
        torch.cuda.set_device(0)

    def dev(self, a):
        if a.dtype == ref.BFLOAT16:
            t = self.torch.from_numpy(a.view(np.int16).copy()).view(self.torch.bfloat16)
        else:
            t = self.torch.from_numpy(a.copy())
        return t.to("cuda:0")

    def host(self, t):
        t = t.cpu()
        if t.dtype == self.torch.bfloat16:
            return t.view(self.torch.int16).numpy().view(ref.BFLOAT16)
        return t.numpy()

    def stream(self):
        return self.torch.cuda.Stream()

    def on(self, s):
        return self.torch.cuda.stream(s)

    def sync(self, s):
        s.synchronize()


LIBS = {"cupy": CupyLib, "torch": TorchLib}


def check_all_reduce(L, rank, world):
    n = 0
    for dtype in L.dtypes:
        for op in ref.OPS:
            if not ref.valid(op, dtype):
                continue
            for count in COUNTS:
                case = f"gpu/all_reduce/{dtype}/{op}/{count}"
                inputs = [ref.make_input(case, r, count, dtype, op) for r in range(world)]
                want = ref.reduce_ref(inputs, op, dtype)
                x = L.dev(inputs[rank])
                plexus.all_reduce(x, op=ref.plexus_op(op))
                ref.assert_equal(L.host(x), want, op, f"{L.name} in place {case}")
                x, out = L.dev(inputs[rank]), L.dev(np.zeros_like(inputs[rank]))
                plexus.all_reduce(x, op=ref.plexus_op(op), out=out)
                ref.assert_equal(L.host(out), want, op, f"{L.name} out= {case}")
                ref.assert_equal(L.host(x), inputs[rank], "SUM", f"{L.name} input left alone {case}")
                n += 2
    return n


def check_gathers(L, rank, world):
    n = 0
    for dtype in L.dtypes:
        for count in COUNTS:
            case = f"gpu/gather/{dtype}/{count}"
            inputs = [ref.make_input(case, r, count, dtype) for r in range(world)]
            zeros = np.zeros(count, ref.np_dtype(dtype))
            outs = [L.dev(zeros) for _ in range(world)]
            plexus.all_gather(outs, L.dev(inputs[rank]))
            for r in range(world):
                ref.assert_equal(L.host(outs[r]), inputs[r], "SUM", f"{L.name} all_gather {case} block {r}")
            whole = L.dev(np.zeros(count * world, ref.np_dtype(dtype)))
            plexus.all_gather_into_tensor(whole, L.dev(inputs[rank]))
            ref.assert_equal(L.host(whole), np.concatenate(inputs), "SUM", f"{L.name} into tensor {case}")
            whole = L.dev(np.zeros(count * world, ref.np_dtype(dtype)))
            mine = whole[rank * count:(rank + 1) * count]
            mine[...] = L.dev(inputs[rank])
            plexus.all_gather_into_tensor(whole, mine)  # in place: a view of the output
            ref.assert_equal(L.host(whole), np.concatenate(inputs), "SUM", f"{L.name} into tensor in place {case}")
            root = count % world
            outs = [L.dev(zeros) for _ in range(world)] if rank == root else None
            plexus.gather(L.dev(inputs[rank]), outs, dst=root)
            if rank == root:
                for r in range(world):
                    ref.assert_equal(L.host(outs[r]), inputs[r], "SUM", f"{L.name} gather {case} block {r}")
            n += 4
    return n


def check_reduce_scatters(L, rank, world):
    n = 0
    for dtype in L.dtypes:
        for op in ("SUM", "MAX"):
            count = 1001
            case = f"gpu/reduce_scatter/{dtype}/{op}"
            full = [ref.make_input(case, r, count * world, dtype, op) for r in range(world)]
            want = ref.reduce_ref(full, op, dtype)[rank * count:(rank + 1) * count]
            out = L.dev(np.zeros(count, ref.np_dtype(dtype)))
            blocks = [L.dev(full[rank][i * count:(i + 1) * count].copy()) for i in range(world)]
            plexus.reduce_scatter(out, blocks, op=ref.plexus_op(op))
            ref.assert_equal(L.host(out), want, op, f"{L.name} list {case}")
            out = L.dev(np.zeros(count, ref.np_dtype(dtype)))
            plexus.reduce_scatter_tensor(out, L.dev(full[rank]), op=ref.plexus_op(op))
            ref.assert_equal(L.host(out), want, op, f"{L.name} tensor {case}")
            src = L.dev(full[rank])
            out = src[rank * count:(rank + 1) * count]
            plexus.reduce_scatter_tensor(out, src, op=ref.plexus_op(op))  # in place
            ref.assert_equal(L.host(out), want, op, f"{L.name} tensor in place {case}")
            n += 3
    return n


def check_rooted(L, rank, world):
    n = 0
    for i, dtype in enumerate(L.dtypes):
        root = i % world
        case = f"gpu/rooted/{dtype}"
        want = ref.make_input(case, root, 999, dtype)
        x = L.dev(want if rank == root else ref.make_input(case + "/junk", rank, 999, dtype))
        plexus.broadcast(x, src=root)
        ref.assert_equal(L.host(x), want, "SUM", f"{L.name} broadcast {case}")
        inputs = [ref.make_input(case, r, 999, dtype) for r in range(world)]
        x = L.dev(inputs[rank])
        plexus.reduce(x, dst=root)
        want = ref.reduce_ref(inputs, "SUM", dtype) if rank == root else inputs[rank]
        ref.assert_equal(L.host(x), want, "SUM", f"{L.name} reduce {case}")
        out = L.dev(np.zeros(999, ref.np_dtype(dtype)))
        plexus.scatter(out, [L.dev(b) for b in inputs] if rank == root else None, src=root)
        ref.assert_equal(L.host(out), inputs[rank], "SUM", f"{L.name} scatter {case}")
        n += 3
    plexus.barrier()
    return n


def check_all_to_all(L, rank, world):
    sent = {(i, j): np.full(3 + i + j, 10 * i + j, np.int32) for i in range(world) for j in range(world)}
    outs = [L.dev(np.zeros(3 + j + rank, np.int32)) for j in range(world)]
    plexus.all_to_all(outs, [L.dev(sent[(rank, j)]) for j in range(world)])
    for j in range(world):
        ref.assert_equal(L.host(outs[j]), sent[(j, rank)], "SUM", f"{L.name} all_to_all from {j}")
    src = L.dev(np.arange(world * 4, dtype=np.int64) + 100 * rank)
    dst = L.dev(np.zeros(world * 4, np.int64))
    plexus.all_to_all_single(dst, src)
    want = np.concatenate([np.arange(rank * 4, rank * 4 + 4) + 100 * j for j in range(world)])
    ref.assert_equal(L.host(dst), want.astype(np.int64), "SUM", f"{L.name} all_to_all_single")
    return 2


def check_p2p(L, rank, world):
    if world == 1:
        return 1
    x = L.dev(np.full(1000, rank, np.float32))
    got = L.dev(np.zeros(1000, np.float32))
    if rank % 2 == 0:
        plexus.send(x, dst=(rank + 1) % world)
        plexus.recv(got, src=(rank - 1) % world)
    else:
        plexus.recv(got, src=(rank - 1) % world)
        plexus.send(x, dst=(rank + 1) % world)
    ref.assert_equal(L.host(got), np.full(1000, (rank - 1) % world, np.float32), "SUM", f"{L.name} send/recv")
    w = [plexus.isend(x, dst=(rank + 1) % world), plexus.irecv(got, src=(rank - 1) % world)]
    for h in w:
        h.wait()
    ref.assert_equal(L.host(got), np.full(1000, (rank - 1) % world, np.float32), "SUM", f"{L.name} isend/irecv")
    return 2


def check_streams_and_async(L, rank, world):
    total = world * (world + 1) / 2
    s = L.stream()
    with L.on(s):
        x = L.dev(np.zeros(1 << 22, np.float32))
        x += rank + 1  # queued on s: all_reduce must wait for it
        plexus.all_reduce(x)
        y = x * 2  # queued after all_reduce's copy back: sees the sum
    L.sync(s)
    ref.assert_equal(L.host(y), np.full(1 << 22, 2 * total, np.float32), "SUM", f"{L.name} stream order")
    x = L.dev(np.full(4096, rank + 1, np.float32))
    w = plexus.all_reduce(x, async_op=True)
    w.wait()  # NCCL's rule: the current stream waits; the GPU may still be running (is_completed False)
    w.synchronize()  # the host waits
    assert w.is_completed() and w.is_success()
    ref.assert_equal(L.host(x), np.full(4096, total, np.float32), "SUM", f"{L.name} async")
    assert w.result()[0] is x
    return 2


CHECKS = [check_all_reduce, check_gathers, check_reduce_scatters, check_rooted, check_all_to_all, check_p2p,
          check_streams_and_async]


def check_ipc_does_not_block_the_host(L, rank, world):
    """all_reduce through CUDA IPC enqueues and returns: a long kernel queued before it is still
    running when it returns (staging would have waited for it)."""
    from plexus import _C

    if not _C.built_with_cuda:
        return 0
    x = L.dev(np.full(1 << 24, rank + 1.0, np.float32))
    s = L.stream()
    with L.on(s):
        busy = L.dev(np.zeros(1 << 26, np.float32))
        for _ in range(200):
            busy += 1  # ~ 30 ms of work ahead of the all_reduce on s (an H100 moves 256 MiB x 2 in 0.2 ms)
        plexus.all_reduce(x)
        returned_early = not _stream_done(L, s)
    L.sync(s)
    ref.assert_equal(L.host(x), np.full(1 << 24, world * (world + 1) / 2, np.float32), "SUM", f"{L.name} ipc order")
    assert returned_early, "all_reduce waited for the GPU before returning"
    return 1


def _stream_done(L, s):
    return bool(s.done) if L.name == "cupy" else bool(s.query())


# First, while few peer mappings exist: closing stale ones (every STALE_CALLS calls) syncs the device.
CHECKS = [check_ipc_does_not_block_the_host] + CHECKS


def _run_all(rank, world, lib):
    from plexus import device

    L = LIBS[lib]()
    done = {c.__name__: c(L, rank, world) for c in CHECKS}
    # The kinds of plexus.device.native ran as native kernels; nothing was staged.
    done["paths"] = sorted(device.PATHS)
    return done


def _check_results(results):
    assert all(r == results[0] for r in results), results
    assert results[0]["paths"] == ["native"], results[0]["paths"]


@pytest.mark.cupy
@pytest.mark.parametrize("world", [1, 2, 4])
def test_cupy_collectives(world):
    _check_results(run_ranks(world, _run_all, "cupy", timeout=600))


@pytest.mark.torch_cuda
@pytest.mark.parametrize("world", [1, 2, 4])
def test_torch_cuda_collectives(world):
    _check_results(run_ranks(world, _run_all, "torch", timeout=600))


def _across_hosts(rank, world, lib):
    from plexus import device

    L = LIBS[lib]()
    n = check_all_reduce(L, rank, world) + check_streams_and_async(L, rank, world)
    return n, sorted(device.PATHS)


@pytest.mark.parametrize("lib", [pytest.param("cupy", marks=pytest.mark.cupy),
                                 pytest.param("torch", marks=pytest.mark.torch_cuda)])
def test_all_reduce_staged_in_chunks_across_hosts(lib):
    """Two pretend hosts: no CUDA IPC, all_reduce goes through host memory in 64 KiB chunks."""
    env = {"PLEXUS_HOST_ID_BY_RANK": "a,b", "PLEXUS_STAGE_CHUNK_BYTES": "65536"}
    results = run_ranks(2, _across_hosts, lib, env=env, timeout=600)
    assert results[0] == results[1], results
    assert results[0][1] == ["staged: the group spans several hosts"], results[0][1]
