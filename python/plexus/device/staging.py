"""Any call on device arrays, run through host memory: correct where nothing faster applies.

The buffers the call reads are copied to pinned host blocks on the caller's current stream
(cupy's current stream, torch.cuda.current_stream()) and waited for; the host collective runs on
the same call with every address moved into those blocks; once it is done, the buffers the call
writes are copied back on that stream, without waiting, so later work on the stream sees the
result, as with NCCL. Buffers that share device memory share host memory too (one block per
overlapping region), so in-place calls (an input that is a slice of the output) stay in place on
the host. A buffer the call only writes is not copied in: every collective writes all of it.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .libraries import ops_for
from .pinned import POOL


def plan_regions(spans: Sequence[Tuple[int, int]]) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Merges overlapping byte spans (ptr, nbytes) into regions (start, end); returns them and the
    region of each span. Empty spans get no region (-1): they need no copies."""
    order = sorted((i for i, (_, n) in enumerate(spans) if n > 0), key=lambda i: spans[i][0])
    regions: List[Tuple[int, int]] = []
    of = [-1] * len(spans)
    for i in order:
        start, end = spans[i][0], spans[i][0] + spans[i][1]
        if regions and start < regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], end))
        else:
            regions.append((start, end))
        of[i] = len(regions) - 1
    return regions, of


class Stage:
    """The host copies of one call's device buffers, from creation (inputs copied in, waited for)
    until finish() (outputs copied back, host blocks recycled)."""

    def __init__(self, call: Any):
        # Each array once: a call may name one twice (an output that is also an input), as two
        # Buffers of the same memory.
        keys: Dict[tuple, Any] = {}
        for b in call.reads + call.writes:
            keys.setdefault((id(b.obj), b.ptr, b.nbytes), b)
        self.buffers = list(keys.values())
        read = {(id(b.obj), b.ptr, b.nbytes) for b in call.reads}
        written = {(id(b.obj), b.ptr, b.nbytes) for b in call.writes}
        self.outputs = [b for k, b in keys.items() if k in written]
        self.lock = threading.Lock()
        self.done = False
        self.copies: List[Tuple[str, Any]] = []  # (library, event after its copies back)
        self.handles = {id(b): ops_for(b.device).wrap(b.obj) for b in self.buffers}  # cupy wraps foreign arrays
        devices = {ops_for(b.device).device_of(self.handles[id(b)]) for b in self.buffers}
        if len(devices) > 1:
            raise ValueError(f"{call.where}: the arrays of one call are on several GPUs {sorted(devices)}")
        self.device = devices.pop() if devices else 0
        self.streams = {k: ops_for(k).current_stream(self.device) for k in {b.device for b in self.buffers}}
        regions, of = plan_regions([(b.ptr, b.nbytes) for b in self.buffers])
        kinds = ["cupy"] * len(regions)
        for b, r in zip(self.buffers, of):
            if r >= 0 and b.device == "torch":
                kinds[r] = "torch"  # torch copies need a torch-allocated (pinned) block
        self.blocks = [POOL.acquire(k, end - start, ops_for(k).alloc_host) for k, (start, end) in zip(kinds, regions)]
        self.starts = [start for start, _ in regions]
        self.ends = [end for _, end in regions]
        self.bases = [block.host.ctypes.data for block in self.blocks]
        self.place = {id(b): (self.blocks[r], b.ptr - regions[r][0]) for b, r in zip(self.buffers, of) if r >= 0}
        for b in self.buffers:
            if b.nbytes and (id(b.obj), b.ptr, b.nbytes) in read:
                block, off = self.place[id(b)]
                ops_for(b.device).to_host(block, off, self.handles[id(b)], b.ptr, b.nbytes, self.streams[b.device])
        for kind, stream in self.streams.items():
            ops_for(kind).synchronize(stream)  # the caller's earlier work and these copies

    def translate(self, ptr: int) -> int:
        """The host address of device address `ptr` (unchanged outside every buffer: an empty
        block's address, never read)."""
        r = bisect.bisect_right(self.starts, ptr) - 1
        if r < 0 or ptr >= self.ends[r]:
            return ptr
        return self.bases[r] + (ptr - self.starts[r])

    def finish(self, ok: bool = True) -> None:
        """Copies the outputs back on the caller's stream at the call (when ok) and recycles the
        host memory; once, whichever thread comes first (the others wait until it is done).
        After a failure the host memory is dropped, not reused: the op may not have let go."""
        with self.lock:
            if self.done:
                return
            self.done = True
            if not ok:
                return
            for b in self.outputs:
                if b.nbytes:
                    block, off = self.place[id(b)]
                    ops_for(b.device).to_device(self.handles[id(b)], b.ptr, block, off, b.nbytes,
                                                self.streams[b.device])
            self.copies = [(k, ops_for(k).record(s)) for k, s in self.streams.items()]
            events = [e for _, e in self.copies]
            event = events[0] if len(events) == 1 else _AllDone(events)
            for block in self.blocks:
                POOL.release(block, event)

    def copied(self) -> bool:
        """Whether the copies back are done (on the GPU)."""
        return all(e.done() for _, e in self.copies)

    def wait_copies(self) -> None:
        """Blocks the host until the copies back are done."""
        for _, e in self.copies:
            e.wait()

    def order_current_streams(self) -> None:
        """Makes the caller's current streams wait for the copies back (work it queues next sees
        the result, whichever stream the call was made on)."""
        for kind, e in self.copies:
            e.stream_wait(ops_for(kind).current_stream(self.device))


class _AllDone:
    def __init__(self, events):
        self.events = events

    def done(self) -> bool:
        return all(e.done() for e in self.events)


class StagedWork:
    """The core work of a staged call. Once the host op is done, the outputs are copied back on
    the stream of the call, by the first of: wait() (which then makes the current stream wait for
    the copies, as NCCL's Work.wait does), host_wait() (which then blocks until they are done:
    futures), is_completed() (True once they are done on the GPU; it never blocks)."""

    __slots__ = ("core", "stage")

    def __init__(self, core: Any, stage: Stage):
        self.core, self.stage = core, stage

    def wait(self, timeout: Optional[float] = None) -> bool:
        ok = self._wait_host_op(timeout)
        if ok:
            self.stage.order_current_streams()
        return ok

    def host_wait(self, timeout: Optional[float] = None) -> bool:
        ok = self._wait_host_op(timeout)
        if ok:
            self.stage.wait_copies()
        return ok

    def _wait_host_op(self, timeout: Optional[float]) -> bool:
        """Waits for the host op, then has the outputs copied back (raises the op's error)."""
        try:
            ok = self.core.wait(timeout)
        except BaseException:
            self.stage.finish(ok=False)
            raise
        if ok:
            self.stage.finish()
        return ok

    def is_completed(self) -> bool:
        if not self.core.is_completed():
            return False
        self.stage.finish(ok=not self.core.failed())
        return self.stage.copied()

    def failed(self) -> bool:
        return self.core.failed()

    def rethrow(self) -> None:
        self.core.rethrow()

    @property
    def what(self) -> str:
        return self.core.what

    @property
    def source(self) -> int:
        return self.core.source


def run(call: Any, blocking: bool, run_host: Callable[[Any, bool], Any]) -> Any:
    """Runs `call` through host memory: `run_host(host_call, blocking)` runs the host collective.
    Returns the core work, or None when `blocking` (done, and its outputs copied back)."""
    stage = Stage(call)
    try:
        core = run_host(call.with_pointers(stage.translate), blocking)
    except BaseException:
        stage.finish(ok=False)
        raise
    if core is None:  # a blocking call that already finished
        stage.finish()
        return None
    work = StagedWork(core, stage)
    if blocking:  # the caller waits at once, on the stream of the call
        work._wait_host_op(None)
        return None
    return work
