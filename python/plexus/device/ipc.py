"""all_reduce, all_gather(_into_tensor), reduce_scatter_tensor, broadcast and reduce on device
arrays of ranks that share one host, through CUDA IPC: each rank maps its peers' arrays into its own address space
(cudaIpcGetMemHandle / cudaIpcOpenMemHandle, csrc/transport/cuda_ipc) and the CUDA reduction
kernel reads and writes them there, on the caller's current stream. No byte goes through host
memory, and the call returns once the work is enqueued, as with NCCL. Ranks may share a GPU.

One call on n ranks:
  1. this rank's `entry` interprocess event is recorded on the caller's stream (the inputs are
     ready, the outputs free);
  2. a host all-gather of one small record per rank: the call's signature, its arrays' IPC
     handles and offsets, its events' handles. A rank that cannot take part (PLEXUS_CUDA_IPC=0,
     no CUDA, memory not from cudaMalloc such as torch's expandable segments) says so, and every
     rank then declines the call (run() returns Declined): the caller stages it through host
     memory instead, all ranks alike;
  3. each rank opens its peers' handles (cached); a one-byte all-gather agrees that all could;
  4. the stream waits for every peer's entry event, the kernels are enqueued, `done` recorded;
  5. a one-byte all-gather (every done event is recorded; did every rank enqueue its part?),
     then the stream waits for every peer's done.
The host never waits for the GPU, only for its peers to reach the same call; steps 2-5 also
order each event's record before the peers' waits on it, which interprocess events need (a wait
sees the latest record issued before it).

all_reduce is two-shot: rank r reduces slice r of every rank's input and writes it into slice r
of every rank's output in one pass (2 x bytes moved per rank, whatever n is). The gather and the
reduce-scatter pull: a rank reads its peers' inputs and writes only its own output; so do
broadcast (from the root) and reduce (into the root).
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _C
from . import arrays
from .libraries import ops_for
from .work import StreamWork

HANDLE = 64  # bytes of a CUDA IPC handle
MAX_DSTS = 8  # destinations the reduction kernel writes in one pass (cuda::kMaxReduceDsts)
OPEN_LIMIT = 256  # peer allocations mapped per group and device before unused ones are closed
STALE_CALLS = 256  # a mapping no call used for this many calls is closed (after a device sync)

# One rank's record of a call: ok code, kind, dtype, op, root (rooted kinds; else 2**32-1),
# count, factor, src/dst offsets, then the 64-byte handles of src, dst and the entry/done events.
# Bytes [1:24] are the call's signature (compared as bytes: a NaN factor too).
_HEAD = struct.Struct("<BBBBIqdQQ")
_SRC, _DST, _ENTRY, _DONE = (_HEAD.size + i * HANDLE for i in range(4))
RECORD_BYTES = _HEAD.size + 4 * HANDLE
KINDS = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce", "all_gather")
_ROOTED = (3, 4)
_UINT8 = _C.DTYPES.index("uint8")
_AVG, _PREMUL_SUM = (_C.OPS.index(name) for name in ("avg", "premul_sum"))


class Declined:
    """What run() returns when the call cannot run through CUDA IPC on every rank of the group:
    every rank alike (after they agreed), or where the group as a whole cannot use IPC. The
    caller stages it through host memory instead."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


class CudaDriver:
    """The CUDA calls the IPC path makes: plexus._C. Tests put a host-memory fake in its place
    (set_driver) to run this module's logic across real processes without a GPU."""

    native = "cuda"  # what the native path (plexus.device.native) runs on: "cuda", "emulated" or None
    memory = "cuda"  # what UCX is told device arrays are (plexus.device.direct; the fake's are host memory)

    @functools.lru_cache(maxsize=None)
    def problem(self) -> Optional[str]:
        """Why this process cannot use CUDA IPC, or None."""
        if not _C.built_with_cuda:
            return "plexus was built without CUDA"
        status = _C._cuda_runtime_status()
        return None if status == "ok" else f"CUDA runtime: {status}"

    def placement(self, buf: Any) -> Tuple[int, int]:
        """(device, caller's current stream as an int) of a device Buffer."""
        return ops_for(buf.device).placement(buf.obj)

    def current_stream(self, kind: str, device: int) -> int:
        stream = ops_for(kind).current_stream(device)
        return int(stream.cuda_stream if kind == "torch" else stream.ptr)

    @staticmethod
    def fast_array(x: Any) -> Optional[Tuple[int, int, int, int, int]]:
        """(pointer, elements, dtype code, device, current stream) of a plain contiguous cupy
        array or torch CUDA tensor on the current device, read without building a Buffer (the
        native all_reduce's hot path); None for anything else, which takes the checked path."""
        cp = sys.modules.get("cupy")
        if cp is not None and type(x) is cp.ndarray:
            code = _NUMPY_CODES.get(x.dtype)
            if code is None or not x.flags.c_contiguous:
                return None
            dev = x.device.id
            if cp.cuda.runtime.getDevice() != dev:
                return None
            return x.data.ptr, x.size, code, dev, cp.cuda.get_current_stream().ptr
        torch = sys.modules.get("torch")
        if torch is not None and type(x) is torch.Tensor and x.is_cuda:  # not subclasses (Parameter)
            code = _torch_codes(torch).get(x.dtype)
            if code is None or not x.is_contiguous():
                return None
            dev = x.get_device()
            return x.data_ptr(), x.numel(), code, dev, _torch_stream(torch)(dev)
        return None

    export = staticmethod(lambda device, ptr: _C._cuda_ipc_export(device, ptr))
    open = staticmethod(lambda device, handle: _C._cuda_ipc_open(device, handle))
    close = staticmethod(lambda device, base: _C._cuda_ipc_close(device, base))
    event_create = staticmethod(lambda device, interprocess: _C._cuda_event_create(device, interprocess))
    event_open = staticmethod(lambda device, handle: _C._cuda_event_open(device, handle))
    event_destroy = staticmethod(lambda device, ev: _C._cuda_event_destroy(device, ev))
    record = staticmethod(lambda device, ev, stream: _C._cuda_event_record(device, ev, stream))
    wait = staticmethod(lambda device, stream, ev: _C._cuda_stream_wait(device, stream, ev))
    query = staticmethod(lambda device, ev: _C._cuda_event_query(device, ev))
    synchronize = staticmethod(lambda device, ev: _C._cuda_event_synchronize(device, ev))
    synchronize_device = staticmethod(lambda device: _C._cuda_device_synchronize(device))
    capturing = staticmethod(lambda device, stream: _C._cuda_stream_capturing(device, stream))
    copy = staticmethod(lambda device, dst, src, nbytes, stream: _C._cuda_memcpy(device, dst, src, nbytes, stream))

    @staticmethod
    def reduce_to(op: int, dtype: int, dsts: List[int], srcs: List[int], n: int, scale: float, stream: int,
                  device: int) -> None:
        _C._cuda_reduce_to(op, dtype, dsts, srcs, n, scale, stream, device)


_NUMPY_CODES = {dtype: _C.DTYPES.index(name) for dtype, name in arrays._NUMPY_NAMES.items()}


@functools.lru_cache(maxsize=1)
def _torch_codes(torch: Any) -> Dict[Any, int]:
    return {getattr(torch, name): code for code, name in enumerate(_C.DTYPES)}


@functools.lru_cache(maxsize=1)
def _torch_stream(torch: Any) -> Any:
    """device -> torch's current stream there, as an address: the raw getter where torch has
    it (torch.cuda.current_stream builds a Stream object, microseconds of the hot path)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw if raw is not None else lambda dev: torch.cuda.current_stream(dev).cuda_stream


_driver: Any = CudaDriver()


def set_driver(driver: Any) -> Any:
    """Replaces the CUDA calls (tests); returns the previous driver."""
    global _driver
    before, _driver = _driver, driver
    return before


def slices(count: int, n: int, itemsize: int) -> List[Tuple[int, int]]:
    """[lo, hi) element ranges, one per rank, covering [0, count): equal but for the last, each
    starting on a 16-byte boundary (relative to the array) so the kernel's vector loads line up."""
    grain = max(1, 16 // itemsize)
    chunk = -(-count // n) if n else 0
    chunk = -(-chunk // grain) * grain
    return [(min(count, r * chunk), min(count, (r + 1) * chunk)) for r in range(n)]


class Mappings:
    """Peers' allocations mapped into this process by their IPC handles, on one device.

    A mapping stays open while calls keep using it (training reuses its buffers). One that no
    call has used for STALE_CALLS calls is closed once the GPU has finished the calls that used it:
    at once when the event recorded after the latest call says so (end_call's `event`; a group's
    calls run in order on the GPU, which its device protocol needs anyway), else at a later check,
    or after waiting for that event (or, without one, the device) when more than OPEN_LIMIT are
    open. CUDA requires the owner not to free an allocation while a peer has it mapped; a handle
    names one allocation, so memory freed and allocated again at the same address comes with a new
    handle and never reaches an old mapping."""

    def __init__(self, driver: Any, device: int):
        self.driver, self.device = driver, device
        self.memory: Dict[bytes, List[int]] = {}  # handle -> [base, last call that used it]
        self.calls = 0

    def base(self, handle: bytes) -> int:
        entry = self.memory.get(handle)
        if entry is None:
            entry = self.memory[handle] = [self.driver.open(self.device, handle), self.calls]
        entry[1] = self.calls
        return entry[0]

    def end_call(self, event: Optional[int] = None) -> None:
        """After a call's work is enqueued (and `event`, if given, recorded after it): closes
        mappings gone stale (never this call's)."""
        self.calls += 1
        if self.calls % STALE_CALLS and len(self.memory) <= OPEN_LIMIT:
            return
        stale = [h for h, (_, last) in self.memory.items() if self.calls - 1 - last >= STALE_CALLS or
                 (len(self.memory) > OPEN_LIMIT and last < self.calls - 1)]
        if not stale:
            return
        if event is None:
            self.driver.synchronize_device(self.device)
        elif not self.driver.query(self.device, event):
            if len(self.memory) <= OPEN_LIMIT:
                return  # closed at a later check, when the GPU is past them
            self.driver.synchronize(self.device, event)
        for h in stale:
            self.driver.close(self.device, self.memory.pop(h)[0])

    def release(self) -> None:
        d, dev = self.driver, self.device
        d.synchronize_device(dev)  # no kernel of ours reads a mapping any more
        for base, _ in self.memory.values():
            d.close(dev, base)
        self.memory.clear()


class _Peers(Mappings):
    """What one group keeps per device: the peers' mapped allocations (Mappings), its two
    interprocess events and the peers' (opened once, by handle)."""

    def __init__(self, driver: Any, device: int):
        super().__init__(driver, device)
        self.entry = driver.event_create(device, True)  # (event, handle)
        self.done = driver.event_create(device, True)
        self.events: Dict[bytes, int] = {}

    def event(self, handle: bytes) -> int:
        ev = self.events.get(handle)
        if ev is None:
            ev = self.events[handle] = self.driver.event_open(self.device, handle)
        return ev

    def release(self) -> None:
        super().release()  # waits for the device first: no kernel waits on an event any more
        for ev in list(self.events.values()) + [self.entry[0], self.done[0]]:
            self.driver.event_destroy(self.device, ev)
        self.events.clear()


_lock = threading.Lock()


def _peers(g: Any, device: int) -> _Peers:
    with _lock:
        table = g.__dict__.setdefault("_cuda_ipc", {})
        p = table.get(device)
        if p is None:
            p = table[device] = _Peers(_driver, device)
        return p


def release(g: Any) -> None:
    """Closes what a group opened; call it while the group's peers may still be running
    (destroy_process_group, before the communicator goes). Errors are ignored: at exit the CUDA
    context may be gone already."""
    table = g.__dict__.pop("_cuda_ipc", None) or {}
    for p in table.values():
        try:
            p.release()
        except Exception:  # noqa: BLE001
            pass


def local_problem() -> Optional[str]:
    """Why this process cannot take part in CUDA IPC, or None. It may differ between ranks, so
    it travels in the record of each call and every rank decides on all of them."""
    if os.environ.get("PLEXUS_CUDA_IPC", "1") == "0":
        return "PLEXUS_CUDA_IPC=0"
    return _driver.problem()


def host_all_gather(g: Any, mine: bytes) -> List[bytes]:
    """Every rank's `mine` (same length on all), in rank order, through the host communicator.
    The buffers are kept per group and length: the hot path allocates nothing but the result."""
    cache = g.__dict__.setdefault("_cuda_ipc_gather", {})
    bufs = cache.get(len(mine))
    if bufs is None:
        src, table = np.zeros(len(mine), np.uint8), np.zeros((g.size(), len(mine)), np.uint8)
        bufs = cache[len(mine)] = (src, table, src.ctypes.data, [table[i].ctypes.data for i in range(g.size())])
    src, table, src_ptr, slots = bufs
    ctypes.memmove(src_ptr, mine, len(mine))
    w = g.comm.all_gather(src_ptr, slots, len(mine), _UINT8, True)
    if w is not None:
        w.wait(None)
    data = table.tobytes()
    return [data[i * len(mine):(i + 1) * len(mine)] for i in range(g.size())]


def _export(device: int, buf: Any) -> Tuple[bytes, int]:
    if buf.nbytes == 0:
        return bytes(HANDLE), 0
    handle, off = _driver.export(device, buf.ptr)
    return bytes(handle), int(off)


def _describe(row: bytes) -> str:
    _, kind, dtype, op, root, count, _, _, _ = _HEAD.unpack_from(row)
    name = KINDS[kind] if kind < len(KINDS) else f"kind {kind}"
    op_name = _C.OPS[op] if op < len(_C.OPS) else f"code {op}"
    rooted = f", root {root}" if kind in _ROOTED else ""
    return f"{name}(dtype {_C.DTYPES[dtype] if dtype < len(_C.DTYPES) else dtype}, count {count}, op {op_name}{rooted})"


def _handle(row: bytes, at: int) -> bytes:
    return row[at:at + HANDLE]


class _DriverEvent:
    """An event of the driver recorded on `stream` now, as StreamWork uses events."""

    def __init__(self, device: int, stream: int):
        self.device = device
        self.event = _driver.event_create(device, False)[0]
        _driver.record(device, self.event, stream)

    def done(self) -> bool:
        return _driver.query(self.device, self.event)

    def wait(self) -> None:
        _driver.synchronize(self.device, self.event)

    def stream_wait(self, stream: int) -> None:
        _driver.wait(self.device, stream, self.event)

    def __del__(self) -> None:
        try:
            _driver.event_destroy(self.device, self.event)
        except Exception:  # noqa: BLE001 - at exit the context may be gone
            pass


# Why a rank's record says it cannot take part (its first byte, when not _OK).
_OK, _DISABLED, _NO_CUDA, _NO_EXPORT, _NO_MAP, _SEVERAL_GPUS = 1, 2, 3, 4, 5, 6
_REASONS = {_DISABLED: "has PLEXUS_CUDA_IPC=0", _NO_CUDA: "cannot use CUDA", _NO_EXPORT: "cannot export its arrays",
            _NO_MAP: "cannot map its peers' arrays", _SEVERAL_GPUS: "has the arrays of one call on several GPUs"}


def run(g: Any, call: Any, blocking: bool) -> Any:
    """`call` (one of KINDS, its buffers on device, checked by the collective layer) enqueued on
    the caller's current stream. Returns None when `blocking` (the stream, not the host, waits),
    else its core work; or Declined, on every rank alike, when it cannot go through CUDA IPC."""
    where, n, r = call.where, g.size(), g.rank()
    if n > 1 and len(set(g.comm.host_ids)) > 1:  # the same answer on every rank
        return Declined("the group spans several hosts")
    kind = KINDS.index(call.kind)
    src = call.reads[0]
    dst = src if kind == 5 else call.writes[0]  # all_gather (list form): its outputs are out_ptrs
    outs = call.out_ptrs if kind == 5 else None
    op, factor, root = max(call.op, 0), call.factor, call.root  # the record says "sum" where nothing reduces
    if kind in _ROOTED and not 0 <= root < n:
        raise ValueError(f"{where}: root {root} is out of range for a group of {n} ranks")
    scale = factor if op == _PREMUL_SUM else 1.0 / n if op == _AVG else 1.0
    problem, code, device, stream = local_problem(), _OK, 0, 0
    if problem:
        code = _DISABLED if problem.startswith("PLEXUS_CUDA_IPC") else _NO_CUDA
    else:
        try:
            device, stream = _driver.placement(dst)
            src_device = _driver.placement(src)[0] if src.nbytes and dst.nbytes else device
        except Exception as e:  # noqa: BLE001 - e.g. a foreign __cuda_array_interface__ object without cupy
            code, problem = _NO_CUDA, f"cannot tell the device and stream of {where}'s arrays: {e}"
        else:
            if src_device != device:
                code, problem = _SEVERAL_GPUS, f"{where}: the arrays of one call are on several GPUs"
    if n == 1:
        if code == _SEVERAL_GPUS:
            raise ValueError(problem)
        if problem:
            return Declined(problem)
        _enqueue(kind, r, 1, src, dst, [src.ptr], [dst.ptr], op, scale, device, stream, root, outs)
    else:
        declined = _exchange_and_enqueue(g, kind, where, src, dst, op, factor, scale, device, stream, code,
                                         problem or "", root, outs)
        if declined is not None:
            return declined
    if blocking:
        return None
    return StreamWork(call.kind, _DriverEvent(device, stream), lambda: _driver.current_stream(dst.device, device))


def _agree(g: Any, where: str, codes: bytes, why: str) -> Optional[Declined]:
    """None when every rank's code is _OK; else, on every rank alike, Declined, or ValueError for
    arrays on several GPUs (a bad call)."""
    if codes.count(_OK) == len(codes):
        return None
    bad = codes.find(_SEVERAL_GPUS)  # a bad call: an error, whatever else is said
    if bad < 0:
        bad = next(i for i, c in enumerate(codes) if c != _OK)
    code = codes[bad]
    text = why if bad == g.rank() and why else f"rank {g.ranks[bad]} {_REASONS.get(code, 'cannot use CUDA IPC')}"
    if code == _SEVERAL_GPUS:
        raise ValueError(text if bad == g.rank() else f"{where}: {text}")
    return Declined(text)


def _exchange_and_enqueue(g: Any, kind: int, where: str, src: Any, dst: Any, op: int, factor: float,
                          scale: float, device: int, stream: int, code: int, why: str, root: int,
                          outs: Optional[List[int]]) -> Optional[Declined]:
    n, r = g.size(), g.rank()
    d = _driver
    src_off = dst_off = 0
    handles = [bytes(HANDLE)] * 4
    if code == _OK:
        try:  # anything failing here is this rank's alone: it says so in its record, and all stage
            peers = _peers(g, device)
            d.record(device, peers.entry[0], stream)  # step 1
            src_handle, src_off = _export(device, src)
            dst_handle, dst_off = _export(device, dst) if kind == 0 else (bytes(HANDLE), 0)
            handles = [src_handle, dst_handle, peers.entry[1], peers.done[1]]
        except Exception as e:  # noqa: BLE001
            code, why = _NO_EXPORT, f"rank {g.ranks[r]} cannot export its arrays: {e}"
    mine = _HEAD.pack(code, kind, dst.code, op, root & 0xFFFFFFFF, dst.count, factor, src_off, dst_off) + b"".join(handles)
    rows = host_all_gather(g, mine)  # step 2
    sig = mine[1:24]
    for p in range(n):
        if rows[p][1:24] != sig:
            raise _C.PlexusError(f"{where}: rank {g.ranks[p]} called {_describe(rows[p])} but rank "
                                 f"{g.ranks[r]} called {_describe(mine)}")
    declined = _agree(g, where, bytes(row[0] for row in rows), why)
    if declined is not None:
        return declined
    srcs, dsts = [0] * n, [0] * n
    try:  # step 3
        for p in range(n):
            if p == r:
                srcs[p], dsts[p] = src.ptr, dst.ptr
                continue
            row = rows[p]
            _, _, _, _, _, _, _, p_src_off, p_dst_off = _HEAD.unpack_from(row)
            if src.nbytes:
                srcs[p] = peers.base(_handle(row, _SRC)) + p_src_off
            if kind == 0 and dst.nbytes:
                dsts[p] = peers.base(_handle(row, _DST)) + p_dst_off
            peers.event(_handle(row, _ENTRY))
            peers.event(_handle(row, _DONE))
    except Exception as e:  # noqa: BLE001
        code, why = _NO_MAP, f"rank {g.ranks[r]} cannot map its peers' arrays: {e}"
    declined = _agree(g, where, b"".join(host_all_gather(g, bytes([code]))), why)
    if declined is not None:
        return declined
    failure = None
    try:  # step 4
        for p in range(n):
            if p != r:
                d.wait(device, stream, peers.event(_handle(rows[p], _ENTRY)))
        _enqueue(kind, r, n, src, dst, srcs, dsts, op, scale, device, stream, root, outs)
    except Exception as e:  # noqa: BLE001 - every rank must still reach step 5
        failure = e
    try:
        d.record(device, peers.done[0], stream)
    except Exception as e:  # noqa: BLE001
        failure = failure or e
    # Step 5: every done event is recorded, and every rank learns whether all enqueued their part.
    status = b"".join(host_all_gather(g, bytes([failure is not None])))
    for p in range(n):
        if p != r:
            d.wait(device, stream, peers.event(_handle(rows[p], _DONE)))
    peers.end_call()
    if failure is not None:
        raise failure
    if any(status):
        bad = g.ranks[next(i for i, failed in enumerate(status) if failed)]
        raise _C.PlexusError(f"{where}: rank {bad} failed to enqueue its part of the call (its error says why)")
    return None


def _enqueue(kind: int, r: int, n: int, src: Any, dst: Any, srcs: List[int], dsts: List[int], op: int,
             scale: float, device: int, stream: int, root: int = -1, outs: Optional[List[int]] = None) -> None:
    """This rank's share of the work, on `stream`: srcs/dsts are every rank's input/output here."""
    d, es = _driver, dst.itemsize
    if kind == 0:  # all_reduce: slice r of every input, reduced into slice r of every output
        lo, hi = slices(dst.count, n, es)[r]
        if hi == lo:
            return
        if n == 1 and scale == 1.0:
            d.copy(device, dst.ptr, src.ptr, dst.nbytes, stream)
            return
        ins = [s + lo * es for s in srcs]
        outs = [o + lo * es for o in dsts]
        if n <= MAX_DSTS:
            d.reduce_to(op, dst.code, outs, ins, hi - lo, scale, stream, device)
        else:  # more outputs than one pass writes: reduce into ours, copy it to the others
            d.reduce_to(op, dst.code, [outs[r]], ins, hi - lo, scale, stream, device)
            for p in range(n):
                if p != r:
                    d.copy(device, outs[p], outs[r], (hi - lo) * es, stream)
    elif kind == 1:  # all_gather_into_tensor: every input into its slot of our output
        for p in range(n):
            d.copy(device, dst.ptr + p * src.nbytes, srcs[p], src.nbytes, stream)
    elif kind == 5:  # all_gather: every input into its entry of our list
        for p in range(n):
            d.copy(device, outs[p], srcs[p], src.nbytes, stream)
    elif kind == 3:  # broadcast: the root's array into ours
        if r != root:
            d.copy(device, dst.ptr, srcs[root], dst.nbytes, stream)
    elif kind == 4:  # reduce: every rank's array, reduced into the root's (in place)
        if r == root and dst.count and (n > 1 or scale != 1.0):
            d.reduce_to(op, dst.code, [dst.ptr], srcs, dst.count, scale, stream, device)
    else:  # reduce_scatter_tensor: block r of every input, reduced into our output
        if dst.count:
            ins = [s + r * dst.nbytes for s in srcs]
            d.reduce_to(op, dst.code, [dst.ptr], ins, dst.count, scale, stream, device)
