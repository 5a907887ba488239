"""Device messages and collectives straight through UCX on a real GPU (plexus.device.direct,
algorithms/port_flat): two ranks sharing GPU 0 with PLEXUS_TRANSPORTS=ucx and UCX_TLS allowing
its CUDA transports, as two hosts would pair (no native kernels or CUDA IPC between them), send,
receive and reduce cupy arrays, UCX told they are CUDA memory. Skipped where UCX does not load or
cannot move CUDA memory (the libucx-cu12/-cu13 wheel can; `plexus info` says)."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
from launch import run_ranks

# Each rank a pretend host of its own (tests/launch.py): no native kernels or CUDA IPC between them.
ENV = {"PLEXUS_TRANSPORTS": "ucx", "UCX_TLS": "tcp,cuda_copy,self", "PLEXUS_HOST_ID_BY_RANK": "h0,h1",
       "PLEXUS_DEVICE_NATIVE": "0", "PLEXUS_CUDA_IPC": "0"}


def _ucx_cuda_problem() -> str:
    from plexus import _C

    info = _C.ucx_status()
    if not info["ok"]:
        return f"UCX does not load here: {info['problem']}"
    return "" if info["cuda_memory"] else "UCX here cannot move CUDA memory"


def _exchange(rank, world):
    import cupy as cp

    from plexus import device

    cp.cuda.Device(0).use()
    to, frm = (rank + 1) % world, (rank - 1) % world
    device.PATHS.clear()
    for i, dtype in enumerate((np.float32, np.float16, np.int64, np.uint8)):
        for n in (0, 1, 4099, 3 << 20):
            base = (np.arange(n) % 251).astype(dtype)
            x, y = cp.asarray(base + rank), cp.zeros(n, dtype)
            x += 0  # work on the caller's stream that the send must wait for
            works = [plexus.isend(x, to, tag=i), plexus.irecv(y, frm, tag=i)]
            for w in works:
                w.wait()
            np.testing.assert_array_equal(cp.asnumpy(y), base + frm, err_msg=f"{dtype} x {n} from {frm}")
    return sorted(device.PATHS)


@pytest.mark.cupy
def test_device_messages_go_straight_through_ucx():
    problem = _ucx_cuda_problem()
    if problem:
        pytest.skip(problem)
    assert run_ranks(2, _exchange, env=ENV, timeout=300) == [["ucx"]] * 2


def _collectives(rank, world):
    import cupy as cp

    from plexus import device

    cp.cuda.Device(0).use()
    device.PATHS.clear()
    for dtype in (np.float32, np.float16, np.int64):
        for n in (0, 1, 4099, 3 << 20):
            base = (np.arange(n) % 13).astype(dtype)
            x = cp.asarray(base)
            x += rank  # work on the caller's stream that the collective must wait for
            plexus.all_reduce(x)
            np.testing.assert_array_equal(cp.asnumpy(x), base * world + sum(range(world)), err_msg=f"all_reduce {n}")
            out = cp.zeros(n * world, dtype)
            plexus.all_gather_into_tensor(out, cp.asarray(base + rank))
            want = np.concatenate([base + r for r in range(world)])
            np.testing.assert_array_equal(cp.asnumpy(out), want, err_msg=f"all_gather {n}")
            mine = cp.zeros(n, dtype)
            plexus.reduce_scatter_tensor(mine, cp.asarray(np.tile(base, world)), op=plexus.ReduceOp.MAX)
            np.testing.assert_array_equal(cp.asnumpy(mine), base, err_msg=f"reduce_scatter {n}")
            y = cp.asarray(base + rank)
            plexus.broadcast(y, src=1)
            np.testing.assert_array_equal(cp.asnumpy(y), base + 1, err_msg=f"broadcast {n}")
    return sorted(device.PATHS)


@pytest.mark.cupy
def test_device_collectives_go_straight_through_ucx():
    problem = _ucx_cuda_problem()
    if problem:
        pytest.skip(problem)
    assert run_ranks(2, _collectives, env=ENV, timeout=300) == [["ucx"]] * 2
