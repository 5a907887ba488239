"""send/recv and collectives of device arrays between hosts straight through UCX: the message port
of the pair's transport (csrc/core/direct_messages.h, csrc/algorithms/port_flat.h). UCX moves the
device memory itself (GPUDirect RDMA where the system has it, else its own pipeline through host
memory) instead of our copy through pinned host memory and a host message or collective.

Both ends of a message decide alike, from what both know: the pair's transport is UCX and both
ranks' UCX moves CUDA memory (`plexus info` says so; PLEXUS_UCX_DEVICE=0 on a rank turns it off
for its pairs), and the tag is below 65536. As with NCCL, both ends must pass device arrays, and a
receive of device arrays from any source is refused where some peer is reached this way. A send
that failed (timed out) may still be read by UCX until its peer takes it or the group is
destroyed: UCX cannot take a send back."""

from __future__ import annotations

import threading
from typing import Any, List, Tuple

from .. import _C
from . import ipc
from .libraries import ops_for

TAG_LIMIT = _C.DIRECT_TAG_LIMIT  # tags from 0 below it (csrc/core/direct_messages.h)
# The collectives that can go this way, by the name the core knows them by.
KINDS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "all_gather_into_tensor": "all_gather",
         "reduce_scatter": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter", "broadcast": "broadcast",
         "reduce": "reduce", "gather": "gather", "scatter": "scatter", "all_to_all": "all_to_all",
         "all_to_all_single": "all_to_all"}
# Working memory of collectives in flight, with their core work: kept until the work completes
# (UCX writes into it meanwhile).
_IN_USE: List[Tuple[Any, Any]] = []
_IN_USE_LOCK = threading.Lock()


def _ready(call: Any, buf: Any, what: str) -> int:
    """The device of `buf`, once the caller's stream is done (UCX reads or writes the memory at
    once, not in stream order). Refused under CUDA graph capture."""
    device, stream = ipc._driver.placement(buf)
    if ipc._driver.capturing(device, stream):
        raise RuntimeError(f"{call.where}: {what} to or from another host cannot be captured in a CUDA graph "
                           "(it goes through UCX, on the host): run it outside the capture")
    ops = ops_for(buf.device)
    ops.synchronize(ops.current_stream(device))
    return device


def message(g: Any, call: Any, blocking: bool) -> Any:
    """A send or recv of a device array (checked by the collective layer): its core work, None
    when `blocking` (done), or ipc.Declined where it is staged."""
    comm = g.comm
    cuda = ipc._driver.memory == "cuda"  # the tests' fake device memory is host memory
    if call.peer < 0:
        if any(comm.direct_reaches(p, cuda) for p in range(g.size()) if p != g.rank()):
            raise ValueError(f"{call.where}: a receive of device arrays from any source cannot meet the device "
                             "messages of peers on other hosts, which go straight through UCX: name the source "
                             "rank (or set PLEXUS_UCX_DEVICE=0 on every rank)")
        return ipc.Declined("a receive from any source")
    if not 0 <= call.tag < TAG_LIMIT:
        return ipc.Declined(f"tags from {TAG_LIMIT} on are staged")
    if not comm.direct_reaches(call.peer, cuda):
        return ipc.Declined("the pair's transport does not move device memory")
    _ready(call, call.reads[0] if call.kind == "send" else call.writes[0], "a device message")
    if call.kind == "send":
        work = comm.send_direct(call.in_ptrs[0], call.count, call.code, call.peer, call.tag, cuda)
    else:
        work = comm.recv_direct(call.out_ptrs[0], call.count, call.code, call.peer, call.tag, cuda)
    if blocking:
        work.wait()
        return None
    return work


def collective(g: Any, call: Any, blocking: bool) -> Any:
    """A collective of device arrays (checked by the collective layer) through every pair's message
    port: its core work, None when `blocking` (done), or ipc.Declined where it cannot go this way
    (on every rank alike: what the ports reach is agreed through the store)."""
    core = KINDS.get(call.kind)
    if core is None:
        return ipc.Declined(f"{call.kind} is not sent through the ports")
    comm, n, r = g.comm, g.size(), g.rank()
    cuda = ipc._driver.memory == "cuda"
    if n < 2 or not all(comm.direct_reaches(p, cuda) for p in range(n) if p != r):
        return ipc.Declined("some pair's transport does not move device memory")
    bufs = call.reads + call.writes
    device = _ready(call, bufs[0], "a device collective")
    ins, outs = list(call.in_ptrs), list(call.out_ptrs)
    if core == "broadcast":
        ins = outs = outs[:1]
    elif core == "gather" and r != call.root:
        outs = [0] * n
    elif core == "scatter" and r != call.root:
        ins = [0] * n
    nbytes = comm.direct_scratch_bytes(core, call.count, call.code, call.root)
    scratch, keep = ops_for(bufs[0].device).device_empty(device, nbytes) if nbytes else (0, None)
    work = comm.collective_direct(core, ins, outs, call.count, call.code, call.op, call.factor, call.root, cuda,
                                  device, scratch, nbytes, blocking, call.in_counts or [], call.out_counts or [])
    if blocking:
        if work is not None:
            work.wait()
        return None
    with _IN_USE_LOCK:
        _IN_USE[:] = [(w, k) for w, k in _IN_USE if not w.is_completed()]
        if keep is not None:
            _IN_USE.append((work, keep))
    return work
