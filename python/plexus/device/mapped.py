"""Large all_reduces of the native device path in place: every rank maps its peers' arrays for
the call, and the direct program of the C++ core (DeviceComm.all_reduce_mapped) reduces slice r
of every input into slice r of every output, 2x the bytes per rank where the staged two-shot
moves (5 - 2/n)x. It costs one host round per call, so it runs from DeviceComm.mapped_min bytes
(PLEXUS_DEVICE_MAPPED_MIN, 16 MiB), where the GPU time saved is larger.

One call, every rank alike:
  1. each rank exports the allocations of its input and output (their IPC handles and offsets);
  2. one host all-gather of the records (and the call's dtype, op and count, compared);
  3. each rank maps its peers' allocations (kept while calls use them: ipc.Mappings) and a
     one-byte all-gather agrees that all could;
  4. the kernel, whose device barriers order every rank's reads and writes.
A rank that cannot export or map makes every rank stage the call instead (all_reduce() returns
why). So does CUDA graph capture (a mapping may be closed before a replay): all ranks of a group
capture alike, as with NCCL. The group agrees on one PLEXUS_DEVICE_MAPPED_MIN when it sets up
(native._setup: the largest of its ranks'), so equal calls take the same path; a rank whose call
differs in size across it, or that uses a buffer registered on it alone, meets a peer on the
other path, and both raise at the group's deadline (not at once, as mismatches on one path do).

The owner of an array must not free its memory back to the driver (torch.cuda.empty_cache(),
cupy's free_all_blocks()) while peers keep it mapped: CUDA leaves that undefined. A mapping no
call used for ipc.STALE_CALLS calls is closed, and destroy_process_group closes them all.
"""

from __future__ import annotations

import collections
import struct
from typing import Any, List, Optional

from .. import _C
from . import ipc

HANDLE = ipc.HANDLE
_HEAD = struct.Struct("<BBB5xQdQQ")  # ok, dtype, op, count, scale, input offset, output offset
_SIGNATURE = (slice(1, 3), slice(8, 24))  # dtype and op; count and scale (PREMUL_SUM's factor)

# Why calls from PLEXUS_DEVICE_MAPPED_MIN bytes were staged in this process (tests read it).
STAGED: "collections.Counter[str]" = collections.Counter()


def _describe(row: bytes) -> str:
    _, dtype, op, count, scale, _, _ = _HEAD.unpack_from(row)
    factor = f", factor {scale!r}" if _C.OPS[op] == "premul_sum" else ""
    return f"all_reduce(dtype {_C.DTYPES[dtype]}, count {count}, op {_C.OPS[op]}{factor})"


class _Mapped(ipc.Mappings):
    """A group's mappings, and the event recorded after its latest call (when they may close)."""

    def __init__(self, driver: Any, device: int):
        super().__init__(driver, device)
        self.event = driver.event_create(device, False)[0]

    def release(self) -> None:
        super().release()
        self.driver.event_destroy(self.device, self.event)


def _mappings(g: Any, device: int) -> _Mapped:
    m = g.__dict__.get("_mapped")  # (the group's device calls all run on one GPU: native.run says so)
    if m is None:
        m = g.__dict__["_mapped"] = _Mapped(ipc._driver, device)
    return m


def _gather(g: Any, mine: bytes, where: str, call: str) -> List[bytes]:
    """ipc.host_all_gather, its failure said in terms of this call."""
    try:
        return ipc.host_all_gather(g, mine)
    except _C.PlexusError as e:
        raise type(e)(f"{where}: rank {g.ranks[g.rank()]} waited for its peers to share the arrays of {call} (at least "
                      f"PLEXUS_DEVICE_MAPPED_MIN bytes: mapped per call): a peer made another call (smaller, between "
                      f"buffers registered on it, or another collective), never made it, or failed ({e})") from e


def all_reduce(g: Any, comm: Any, device: int, src: int, out: int, count: int, code: int, op: int, scale: float,
               stream: int, where: str) -> Optional[str]:
    """Enqueues the all_reduce of `count` elements from `src` into `out` (may be `src`) on
    `stream`, in place on every rank's mapped arrays: None. Or, on every rank alike, why it was not
    (the caller then stages it)."""
    d, n, r = ipc._driver, g.size(), g.rank()
    if d.capturing(device, stream):  # decided alike by every rank: no round with the peers
        STAGED["the stream is being captured"] += 1
        return "the stream is being captured"
    ok, why, handles, offsets = True, "", [bytes(HANDLE)] * 2, [0, 0]
    try:  # step 1: this rank's alone; it says so in its record, and all stage
        src_handle, src_off = d.export(device, src)
        out_handle, out_off = (src_handle, src_off) if out == src else d.export(device, out)
        handles, offsets = [bytes(src_handle), bytes(out_handle)], [int(src_off), int(out_off)]
    except Exception as e:  # noqa: BLE001 - e.g. memory not from cudaMalloc (torch's expandable segments)
        ok, why = False, f"rank {g.ranks[r]} cannot export its arrays: {e}"
    mine = _HEAD.pack(ok, code, op, count, scale, *offsets) + b"".join(handles)
    rows = _gather(g, mine, where, _describe(mine))  # step 2
    for p, row in enumerate(rows):
        if any(row[part] != mine[part] for part in _SIGNATURE):
            raise _C.PlexusError(f"{where}: rank {g.ranks[p]} called {_describe(row)} but rank {g.ranks[r]} called "
                                 f"{_describe(mine)}")
    if not all(row[0] for row in rows):
        bad = next(p for p, row in enumerate(rows) if not row[0])
        return _staged(why if bad == r else f"rank {g.ranks[bad]} cannot export its arrays")
    maps = _mappings(g, device)
    peer_in: List[int] = [0] * n
    peer_out: List[int] = [0] * n
    try:  # step 3
        for p, row in enumerate(rows):
            if p == r:
                peer_in[p], peer_out[p] = src, out
                continue
            *_, p_src_off, p_out_off = _HEAD.unpack_from(row)
            peer_in[p] = maps.base(row[_HEAD.size:_HEAD.size + HANDLE]) + p_src_off
            peer_out[p] = maps.base(row[_HEAD.size + HANDLE:]) + p_out_off
    except Exception as e:  # noqa: BLE001
        ok, why = False, f"rank {g.ranks[r]} cannot map its peers' arrays: {e}"
    agreed = _gather(g, bytes([ok]), where, _describe(mine))
    if not all(row[0] for row in agreed):
        bad = next(p for p, row in enumerate(agreed) if not row[0])
        return _staged(why if bad == r else f"rank {g.ranks[bad]} cannot map its peers' arrays")
    try:
        comm.all_reduce_mapped(src, out, count, code, op, scale, peer_in, peer_out, stream)  # step 4
        d.record(device, maps.event, stream)
    finally:
        maps.end_call(maps.event)
    return None


def _staged(why: str) -> str:
    STAGED[why] += 1
    return why


def release(g: Any) -> None:
    """Closes the group's mappings (after the device has finished what may read them)."""
    m = g.__dict__.pop("_mapped", None)
    if m is not None:
        try:
            m.release()
        except Exception:  # noqa: BLE001 - at exit the context may be gone
            pass
