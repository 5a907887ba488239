"""all_reduce of device arrays staged through pinned host memory in chunks, for groups that
cannot use CUDA IPC (several hosts, or memory that cannot be exported): the device-to-host
copies, the host all-reduce of each chunk (the network) and the copies back overlap.

    chunk 0: D2H ─ all_reduce ─ H2D
    chunk 1:  D2H ──── all_reduce ─ H2D
    chunk 2:   D2H ─────── all_reduce ─ H2D

Every D2H copy is enqueued on the caller's current stream at once (after the caller's earlier
work), an event after each; the calling thread waits for chunk i's event, submits its host
all-reduce (the communicator's progress thread runs it, several chunks in flight), and enqueues
the copy back of every chunk already reduced, on the same stream. The call returns when the
last copy back is enqueued. PLEXUS_STAGE_CHUNK_BYTES sets the chunk (default 4 MiB; the same on
every rank). On failure the device output may hold some chunks of the result.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import numpy as np

from . import _C
from ._cuda_ipc import PATHS
from ._device_ops import ops_for
from ._pinned import POOL

_INT64 = _C.DTYPES.index("int64")


def chunk_bytes() -> int:
    value = os.environ.get("PLEXUS_STAGE_CHUNK_BYTES", "")
    try:
        n = int(float(value)) if value else 4 << 20
    except ValueError:
        raise ValueError(f"PLEXUS_STAGE_CHUNK_BYTES={value!r} is not a number of bytes") from None
    return max(1, n)


def _check_calls(g: Any, where: str, count: int, dtype: int, op: int, chunk: int) -> None:
    """Ranks that disagree on the call fail now, on every rank, instead of in a later chunk."""
    mine = np.array([count, dtype, op, chunk], np.int64)
    table = np.zeros((g.size(), 4), np.int64)
    w = g.comm.all_gather(mine.ctypes.data, [table[i].ctypes.data for i in range(g.size())], 4, _INT64, True)
    if w is not None:
        w.wait(None)
    for p in range(g.size()):
        if (table[p] != mine).any():
            raise _C.PlexusError(
                f"{where}: rank {g.ranks[p]} called all_reduce(count {table[p][0]}, dtype {_C.DTYPES[table[p][1]]}, "
                f"op {_C.OPS[table[p][2]]}, chunk {table[p][3]} B) but rank {g.ranks[g.rank()]} called "
                f"all_reduce(count {count}, dtype {_C.DTYPES[dtype]}, op {_C.OPS[op]}, chunk {chunk} B)")


def all_reduce(g: Any, where: str, src: Any, dst: Any, op: int, factor: float, why: str) -> Any:
    """all_reduce of device Buffer `src` into `dst` (may be the same) through host memory.
    Returns the core work of the last chunk (done)."""
    PATHS[f"staged: {why}"] += 1
    ops = ops_for(dst.device)
    h_src, h_dst = ops.wrap(src.obj), ops.wrap(dst.obj)
    stream = ops.current_stream(ops.device_of(h_dst))
    es, count = dst.itemsize, dst.count
    per = max(1, chunk_bytes() // es)
    _check_calls(g, where, count, dst.code, op, per * es)
    bounds = [(lo, min(count, lo + per)) for lo in range(0, count, per)] or [(0, 0)]
    block = POOL.acquire(dst.device, max(1, dst.nbytes), ops.alloc_host)
    host = block.host.ctypes.data
    events = []
    for lo, hi in bounds:  # all at once: the copy engine runs ahead of the network
        if hi > lo:
            ops.to_host(block, lo * es, h_src, src.ptr + lo * es, (hi - lo) * es, stream)
        events.append(ops.record(stream))
    pending: "collections.deque" = collections.deque()

    def copy_back(all_of_them: bool) -> Any:
        last = None
        while pending and (all_of_them or pending[0][2].is_completed()):
            lo, hi, w = pending.popleft()
            w.wait(None)  # raises the chunk's error
            if hi > lo:
                ops.to_device(h_dst, dst.ptr + lo * es, block, lo * es, (hi - lo) * es, stream)
            last = w
        return last

    try:
        last = None
        for (lo, hi), ev in zip(bounds, events):
            ev.wait()  # this chunk is on the host
            ptr = host + lo * es
            pending.append((lo, hi, g.comm.all_reduce(ptr, ptr, hi - lo, dst.code, op, factor, False)))
            last = copy_back(False) or last
        last = copy_back(True) or last
    except BaseException:
        # Chunks still in flight write the block: let them end (fail, or finish) before it goes.
        # Copies back already enqueued stay: the output may hold part of the result.
        for _, _, w in pending:
            try:
                w.wait(None)
            except BaseException:  # noqa: BLE001 - the first error is the one raised
                pass
        raise
    POOL.release(block, ops.record(stream))
    return last
