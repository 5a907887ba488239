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

from typing import Any

from .. import _C
from . import ipc
from .libraries import ops_for

TAG_LIMIT = _C.DIRECT_TAG_LIMIT  # tags from 0 below it (csrc/core/direct_messages.h)
# The collectives that can go this way, by the name the core knows them by.
KINDS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "all_gather_into_tensor": "all_gather",
         "reduce_scatter": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter", "broadcast": "broadcast",
         "reduce": "reduce", "gather": "gather", "scatter": "scatter", "all_to_all": "all_to_all",
         "all_to_all_single": "all_to_all"}


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
    if n < 2 or len(set(comm.host_ids)) < 2:  # one host: native kernels or CUDA IPC serve it better
        return ipc.Declined("the group is on one host")
    if not _every_pair_reaches(g):
        return ipc.Declined("some pair's transport does not move device memory")
    cuda = ipc._driver.memory == "cuda"
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
    if keep is not None:
        g.track([work], keep)  # UCX writes into it until the work completes
    return work


def _every_pair_reaches(g: Any) -> bool:
    """Whether every pair of the group, not only this rank's, sends device memory through its
    message port: asked of every rank once per group (a host all-gather at its first device
    collective between hosts), so that all ranks take the same path."""
    known = g.__dict__.get("_direct_collectives")
    if known is None:
        cuda = ipc._driver.memory == "cuda"
        mine = all(g.comm.direct_reaches(p, cuda) for p in range(g.size()) if p != g.rank())
        known = g.__dict__["_direct_collectives"] = all(row == b"\x01" for row in ipc.host_all_gather(g, bytes([mine])))
    return known
