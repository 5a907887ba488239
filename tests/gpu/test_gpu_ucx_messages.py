"""Device messages straight through UCX on a real GPU (plexus.device.direct): two ranks sharing
GPU 0 with PLEXUS_TRANSPORTS=ucx and UCX_TLS allowing its CUDA transports, as two hosts would
pair, send and receive cupy arrays, UCX told they are CUDA memory. Skipped where UCX does not load
or cannot move CUDA memory (the libucx-cu12/-cu13 wheel can; `plexus info` says)."""

from __future__ import annotations

import numpy as np
import pytest

import plexus
from launch import run_ranks

ENV = {"PLEXUS_TRANSPORTS": "ucx", "UCX_TLS": "tcp,cuda_copy,self"}


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
