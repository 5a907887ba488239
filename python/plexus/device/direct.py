"""send/recv of device arrays between hosts straight through UCX: the message port of the pair's
transport (csrc/core/direct_messages.h). UCX moves the device memory itself (GPUDirect RDMA where
the system has it, else its own pipeline through host memory) instead of our copy through pinned
host memory and a host message.

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
    if ipc._driver.capturing(*ipc._driver.placement(buf)):
        raise RuntimeError(f"{call.where}: a device message to or from another host cannot be captured in a CUDA "
                           "graph (it goes through UCX, on the host): send it outside the capture")
    ops = ops_for(buf.device)
    ops.synchronize(ops.current_stream(ops.device_of(ops.wrap(buf.obj))))  # UCX reads or writes it now
    if call.kind == "send":
        work = comm.send_direct(call.in_ptrs[0], call.count, call.code, call.peer, call.tag, cuda)
    else:
        work = comm.recv_direct(call.out_ptrs[0], call.count, call.code, call.peer, call.tag, cuda)
    if blocking:
        work.wait()
        return None
    return work

