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

from .. import _C
from .ipc import host_all_gather
from .libraries import ops_for
from .pinned import POOL
from .work import StreamWork


def chunk_bytes() -> int:
    value = os.environ.get("PLEXUS_STAGE_CHUNK_BYTES", "")
    try:
        n = int(float(value)) if value else 4 << 20
    except ValueError:
        raise ValueError(f"PLEXUS_STAGE_CHUNK_BYTES={value!r} is not a number of bytes") from None
    return max(1, n)


def _check_calls(g: Any, where: str, count: int, dtype: int, op: int, chunk: int, local: Any) -> None:
    """Ranks that disagree on the call, or could not set it up (`local`: this rank's exception
    or None), fail now, every one of them, instead of some waiting in a later chunk."""
    mine = np.array([count, dtype, op, chunk, local is not None], np.int64)
    table = np.frombuffer(b"".join(host_all_gather(g, mine.tobytes())), np.int64).reshape(g.size(), mine.size)
    if local is not None:
        raise local
    if table[:, 4].any():
        bad = g.ranks[int(np.flatnonzero(table[:, 4])[0])]
        raise _C.PlexusError(f"{where}: rank {bad} could not stage its arrays through host memory (its error says why)")
    for p in range(g.size()):
        if (table[p] != mine).any():
            raise _C.PlexusError(
                f"{where}: rank {g.ranks[p]} called all_reduce(count {table[p][0]}, dtype {_C.DTYPES[table[p][1]]}, "
                f"op {_C.OPS[table[p][2]]}, chunk {table[p][3]} B) but rank {g.ranks[g.rank()]} called "
                f"all_reduce(count {count}, dtype {_C.DTYPES[dtype]}, op {_C.OPS[op]}, chunk {chunk} B)")


def all_reduce(g: Any, call: Any) -> StreamWork:
    """An all_reduce call of device buffers (the output may be the input) through host memory, on
    the caller's current stream. Returns its core work."""
    where, src, dst, op, factor = call.where, call.reads[0], call.writes[0], call.op, call.factor
    es, count = dst.itemsize, dst.count
    local, per, block = None, 1, None
    try:  # what can fail on this rank alone: every rank hears of it in _check_calls
        per = max(1, chunk_bytes() // es)
        ops = ops_for(dst.device)
        h_src, h_dst = ops.wrap(src.obj), ops.wrap(dst.obj)
        device = ops.device_of(h_dst)
        if src.nbytes and ops.device_of(h_src) != device:
            raise ValueError(f"{where}: the arrays of one call are on several GPUs")
        stream = ops.current_stream(device)
        block = POOL.acquire(dst.device, max(1, dst.nbytes), ops.alloc_host)
    except Exception as e:  # noqa: BLE001
        local = e
    _check_calls(g, where, count, dst.code, op, per * es, local)
    bounds = [(lo, min(count, lo + per)) for lo in range(0, count, per)] or [(0, 0)]
    host = block.host.ctypes.data
    pending: "collections.deque" = collections.deque()
    failure = None
    events = []
    try:
        for lo, hi in bounds:  # all at once: the copy engine runs ahead of the network
            if hi > lo:
                ops.to_host(block, lo * es, h_src, src.ptr + lo * es, (hi - lo) * es, stream)
            events.append(ops.record(stream))
    except Exception as e:  # noqa: BLE001
        failure = e

    def copy_back(all_of_them: bool) -> None:
        nonlocal failure
        while pending and (all_of_them or pending[0][2].is_completed()):
            lo, hi, w = pending.popleft()
            w.wait(None)  # raises the chunk's error (the communicator's: every rank sees one)
            if hi > lo and failure is None:
                try:
                    ops.to_device(h_dst, dst.ptr + lo * es, block, lo * es, (hi - lo) * es, stream)
                except Exception as e:  # noqa: BLE001
                    failure = e

    try:
        for i, (lo, hi) in enumerate(bounds):
            if failure is None:
                try:
                    events[i].wait()  # this chunk is on the host
                except Exception as e:  # noqa: BLE001
                    failure = e
            # Chunks go on after a local failure, so that the peers are not left waiting.
            ptr = host + lo * es
            pending.append((lo, hi, g.comm.all_reduce(ptr, ptr, hi - lo, dst.code, op, factor, False)))
            copy_back(False)
        copy_back(True)
    finally:
        for _, _, w in pending:  # after an error: let the chunks in flight end before the block goes
            try:
                w.wait(None)
            except BaseException:  # noqa: BLE001 - the first error is the one raised
                pass
        try:
            done = ops.record(stream)
            POOL.release(block, done)  # reused once the copies that read it are done
        except Exception as e:  # noqa: BLE001 - a broken stream: the block is dropped, not reused
            done, failure = None, failure or e
    everyone = b"".join(host_all_gather(g, bytes([failure is not None])))
    if failure is not None:
        raise failure
    if any(everyone):
        bad = g.ranks[next(i for i, failed in enumerate(everyone) if failed)]
        raise _C.PlexusError(f"{where}: rank {bad} failed while staging its arrays (its error says why); "
                             "the device output may hold part of the result")
    return StreamWork("all_reduce", done, lambda: ops.current_stream(device))
