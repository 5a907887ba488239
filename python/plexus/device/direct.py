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
from typing import Any, Tuple

from .. import _C
from . import ipc
from .libraries import ops_for

_AGREE_LOCK = threading.Lock()
TAG_LIMIT = _C.DIRECT_TAG_LIMIT  # tags from 0 below it (csrc/core/direct_messages.h)
# The collectives that can go this way, by the name the core knows them by.
KINDS = {"all_reduce": "all_reduce", "all_gather": "all_gather", "all_gather_into_tensor": "all_gather",
         "reduce_scatter": "reduce_scatter", "reduce_scatter_tensor": "reduce_scatter", "broadcast": "broadcast",
         "reduce": "reduce", "gather": "gather", "scatter": "scatter", "all_to_all": "all_to_all",
         "all_to_all_single": "all_to_all"}


def _placed(call: Any, buf: Any, what: str) -> Tuple[int, int]:
    """The device and caller's stream of `buf`; refused under CUDA graph capture (UCX moves the
    memory from the host's side, not in stream order)."""
    device, stream = ipc._driver.placement(buf)
    if ipc._driver.capturing(device, stream):
        raise RuntimeError(f"{call.where}: {what} to or from another host cannot be captured in a CUDA graph "
                           "(it goes through UCX, on the host): run it outside the capture")
    return device, stream


def _synchronize(buf: Any, device: int) -> None:
    """Waits for the caller's stream: UCX reads or writes the memory at once."""
    ops = ops_for(buf.device)
    ops.synchronize(ops.current_stream(device))


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
    buf = call.reads[0] if call.kind == "send" else call.writes[0]
    _synchronize(buf, _placed(call, buf, "a device message")[0])
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
    (on every rank alike: the group agrees once, see _every_pair_reaches). The work's wait() blocks
    the host until the outputs are written (UCX and the reductions do not run in stream order).
    `call.kind` is one of KINDS."""
    core = KINDS[call.kind]
    comm, n, r = g.comm, g.size(), g.rank()
    if n < 2 or len(set(comm.host_ids)) < 2:  # one host: native kernels or CUDA IPC serve it better
        return ipc.Declined("the group is on one host")
    if not _every_pair_reaches(g):
        return ipc.Declined("some pair's transport does not move device memory")
    cuda = ipc._driver.memory == "cuda"
    bufs = call.reads + call.writes
    device, stream = _placed(call, bufs[0], "a device collective")
    ready, event = None, 0
    if cuda:  # the op waits for the caller's stream, on its own thread: this one goes on queueing work
        ready = ipc._DriverEvent(device, stream)
        event = ready.event
    else:  # the tests' fake device memory: its library's stream
        _synchronize(bufs[0], device)
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
                                  device, scratch, nbytes, event, blocking, call.in_counts or [],
                                  call.out_counts or [])
    if blocking:
        if work is not None:
            work.wait()
        return None
    g.track([work], (keep, ready))  # UCX writes into the working memory until the work completes
    return work


def _every_pair_reaches(g: Any) -> bool:
    """Whether every pair of the group, not only this rank's, sends device memory through its
    message port: asked of every rank once per group and memory kind (a host all-gather on the
    group at its first device collective between hosts), so that all ranks take the same path."""
    cuda = ipc._driver.memory == "cuda"
    with _AGREE_LOCK:  # one all-gather, whichever thread comes first
        known = g.__dict__.setdefault("_direct_collectives", {})
        if cuda not in known:
            mine = all(g.comm.direct_reaches(p, cuda) for p in range(g.size()) if p != g.rank())
            known[cuda] = all(row == b"\x01" for row in ipc.host_all_gather(g, bytes([mine])))
        return known[cuda]
