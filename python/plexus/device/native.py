"""The native device path: all_reduce, all_gather (both forms), reduce_scatter_tensor, broadcast,
reduce, gather, scatter and all_to_all (both forms), and send/recv (message()), on device arrays of ranks that share
one host, as kernels of the C++ core
(plexus._C.DeviceComm, csrc/core/device_comm.h) that synchronise through signal pads in mapped
device memory. This module only turns a call into pointers, a dtype and a stream.

Setup, once per group, at its first device call of these kinds: every rank allocates its
workspace, one host all-gather shares the IPC handles, each rank maps its peers', a one-byte
all-gather agrees that all could. From then on a call is a launch on the caller's current stream:
no host round with the peers, nothing the host waits for, so it can be captured in a CUDA graph
(all_to_all too: its kernel shares the block sizes through the pads and checks every pair). The
one exception, with one host round per call: the all_reduces that mapped.py maps (staged instead
under capture).
A rank that cannot take part (no CUDA, PLEXUS_DEVICE_NATIVE=0, several hosts, more than 8 ranks)
makes every rank decline, for good, and so do ranks whose PLEXUS_DEVICE_SCRATCH or
PLEXUS_DEVICE_ALGO differ: the group then uses plexus.device.ipc.

register() maps a buffer of every rank once (plexus.register), so large all_reduces between
registered buffers run in place; all_reduce_fast() is the hot path of a blocking in-place
all_reduce of a plain array. All_reduces from PLEXUS_DEVICE_MAPPED_MIN bytes (16 MiB) of
unregistered arrays run in place too, on arrays mapped for the call, at the price of one host
round (plexus.device.mapped).

The group is bound to the GPU of its first such call (as a NCCL communicator is to its device);
arrays on another GPU are a ValueError. With the fake driver of the tests (its `native` is
"emulated"), the same C++ protocol runs on host memory, on the calling thread.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any, Optional

from .. import _C
from . import arrays, ipc, mapped
from .work import StreamWork

MESSAGES = ("send", "recv")
KINDS = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce",
         "gather", "scatter", "all_to_all", "all_to_all_single")
MAX_RANKS = 8
HANDLE = 64
# A rank's setup row after its ok byte, grid and workspace handle: PLEXUS_DEVICE_MAPPED_MIN, the
# scratch size, PLEXUS_DEVICE_ALGO (8 bytes), and whether it staged a device message before.
_SETTINGS = struct.Struct("<QQ8s?")
_AVG, _PREMUL_SUM = (_C.OPS.index(name) for name in ("avg", "premul_sum"))
_lock = threading.Lock()


class _Native:
    __slots__ = ("comm", "device", "mapped_min", "messages")

    def __init__(self, comm: Any, device: int, mapped_min: int, messages: Optional[ipc.Declined]):
        # mapped_min: all_reduce bytes from which the ranks' arrays are mapped per call (mapped.py):
        # the group's comm.mapped_min, kept here for the hot path (and out of reach on one rank).
        # messages: None where send/recv run natively, else why they are staged.
        self.comm, self.device, self.mapped_min, self.messages = comm, device, mapped_min, messages


def _problem(g: Any) -> Optional[str]:
    """Why this rank cannot use the native path (None: it can)."""
    if os.environ.get("PLEXUS_DEVICE_NATIVE", "1") == "0":
        return "PLEXUS_DEVICE_NATIVE=0"
    if getattr(ipc._driver, "native", None) is None:
        return "the CUDA driver in use offers no native path"
    if g.size() > MAX_RANKS:
        return f"the group has {g.size()} ranks (the native path spans at most {MAX_RANKS})"
    if len(set(g.comm.host_ids)) > 1:
        return "the group spans several hosts"
    return ipc.local_problem()


def _setup(g: Any, device: int) -> Any:
    """The group's _Native, or ipc.Declined on every rank alike."""
    problem, comm, handle, blocks, mapped_min, scratch = _problem(g), None, b"", 0, 0, 0
    if problem is None:
        try:
            emulated = ipc._driver.native == "emulated"
            comm = _C.DeviceComm(g.rank(), g.size(), device, emulated, 0, g.comm.timeout, list(g.ranks))
            handle, blocks, mapped_min, scratch = comm.handle(), comm.blocks, comm.mapped_min, comm.scratch_bytes
        except Exception as e:  # noqa: BLE001 - this rank's alone: it says so, and all decline
            problem, comm = f"rank {g.ranks[g.rank()]} cannot set up its device workspace: {e}", None
    algo = os.environ.get("PLEXUS_DEVICE_ALGO", "").encode()  # (DeviceComm refused any other value)
    staged = bool(g.__dict__.get("_staged_messages"))
    rows = ipc.host_all_gather(g, bytes([problem is None, blocks]) + handle.ljust(HANDLE, b"\0")[:HANDLE] +
                               _SETTINGS.pack(mapped_min, scratch, algo, staged))
    if not all(row[0] for row in rows):
        bad = next(p for p, row in enumerate(rows) if not row[0])
        return ipc.Declined(problem if problem else f"rank {g.ranks[bad]} cannot use the native device path")
    mapped_mins, scratches, algos, stageds = zip(*(_SETTINGS.unpack_from(row, 2 + HANDLE) for row in rows))
    # What every rank must have alike: the scratch size (each maps its peers' workspaces at its
    # own) and a forced all_reduce program (one-shot meeting two-shot reads what was never staged).
    for what, values in (("PLEXUS_DEVICE_SCRATCH", list(scratches)),
                         ("PLEXUS_DEVICE_ALGO", [a.rstrip(b"\0").decode() for a in algos])):
        if len(set(values)) > 1:
            return ipc.Declined(f"the ranks' {what} differ ({values} by rank): the native path needs it alike")
    try:  # one grid for all: the smallest (ranks on GPUs of different sizes)
        comm.connect([row[2:2 + HANDLE] for row in rows], min(row[1] for row in rows))
        # One size from which the group maps its arrays (PLEXUS_DEVICE_MAPPED_MIN, or none where
        # PLEXUS_DEVICE_ALGO forces a program): the largest of its ranks', so equal calls agree.
        comm.mapped_min = max(mapped_mins)
        ok = True
    except Exception as e:  # noqa: BLE001
        problem, ok = f"rank {g.ranks[g.rank()]} cannot map its peers' workspaces: {e}", False
    agreed = ipc.host_all_gather(g, bytes([ok]))
    comm.seal()
    if not all(agreed):
        bad = next(p for p, row in enumerate(agreed) if not row[0])
        return ipc.Declined(problem if problem else f"rank {g.ranks[bad]} cannot map its peers' workspaces")
    messages = None
    if any(stageds):  # its messages still meet the staged ones of their peers (see message())
        ranks = [g.ranks[p] for p, s in enumerate(stageds) if s]
        messages = ipc.Declined(f"rank {ranks[0]} sent or received device arrays before the group's first device "
                                "collective, so the group's messages stay staged")
    return _Native(comm, device, max(comm.mapped_min, 1) if g.size() > 1 else 1 << 64, messages)


def _native(g: Any, device: int) -> Any:
    st = g.__dict__.get("_native")
    if st is None:
        with _lock:
            st = g.__dict__.get("_native")
            if st is None:
                st = g.__dict__["_native"] = _setup(g, device)
    return st


class _Checked:
    """What a call's work waits for (the event after its last launch, or a message's lane work,
    _C.LaneWork); once that is done, the error box is read too."""

    def __init__(self, comm: Any, waitable: Any):
        self.comm, self.waitable = comm, waitable

    def done(self) -> bool:
        if not self.waitable.done():
            return False
        self.comm.check()
        return True

    def wait(self) -> None:
        self.waitable.wait()
        self.comm.check()

    def stream_wait(self, stream: int) -> None:
        self.waitable.stream_wait(stream)  # (a message on the emulated device: the host waits)
        self.comm.check()  # after: what the emulated device just found is raised here


def _on_group_device(st: _Native, device: int, where: str, why: str = "") -> None:
    """A ValueError unless a call's arrays are on the GPU of the group's first device call (`why`:
    why their device is unknown, when it is: -1)."""
    if device != st.device:
        raise ValueError(f"{where}: the group's device collectives run on GPU {st.device} (its first device "
                         f"call), but these arrays are on " + (f"GPU {device}" if device >= 0 else f"no GPU ({why})"))


def run(g: Any, call: Any, blocking: bool) -> Any:
    """`call` (one of KINDS, on device arrays, checked by the collective layer) enqueued on the
    caller's current stream; None when `blocking`, else its core work; ipc.Declined when the
    group cannot use the native path (every rank alike)."""
    st = g.__dict__.get("_native")
    if type(st) is _Native:
        st.comm.check()  # what the device reported; in a forked child, that the group is its parent's
    dst = call.writes[0] if call.writes else call.reads[0]
    why = ""
    try:
        device, stream = ipc._driver.placement(dst)
    except Exception as e:  # noqa: BLE001 - e.g. a foreign __cuda_array_interface__ object without cupy
        device, stream = -1, 0
        why = f"cannot tell the device and stream of {call.where}'s arrays: {e}"
    st = st or _native(g, max(device, 0))
    if isinstance(st, ipc.Declined):
        return st
    _on_group_device(st, device, call.where, why)
    for b in call.reads + call.writes[1:]:  # (several writes: the list form of all_gather)
        if b.obj is not dst.obj and b.nbytes and ipc._driver.placement(b)[0] != device:
            raise ValueError(f"{call.where}: the arrays of one call are on several GPUs")
    comm, op, kind = st.comm, max(call.op, 0), call.kind
    scale = call.factor if op == _PREMUL_SUM else 1.0 / g.size() if op == _AVG else 1.0
    out = call.out_ptrs[0] if call.out_ptrs else call.in_ptrs[0]
    src = call.in_ptrs[0] if call.in_ptrs else out
    if kind == "all_reduce":
        nbytes = dst.nbytes
        if (nbytes < st.mapped_min or comm.in_windows(src, out, nbytes) or
                mapped.all_reduce(g, comm, device, src, out, call.count, call.code, op, scale, stream, call.where)):
            comm.all_reduce(src, out, call.count, call.code, op, scale, stream)  # staged (or registered windows)
    elif kind == "all_gather_into_tensor":
        comm.all_gather(src, out, call.count, call.code, stream)
    elif kind == "all_gather":
        comm.all_gather_list(src, call.out_ptrs, call.count, call.code, stream)
    elif kind == "reduce_scatter_tensor":
        comm.reduce_scatter(src, out, call.count, call.code, op, scale, stream)
    elif kind == "broadcast":
        comm.broadcast(out, out, call.count, call.code, call.root, stream)
    elif kind == "gather":  # out_ptrs: the root's outputs, none elsewhere
        comm.gather(src, call.out_ptrs, call.count, call.code, call.root, stream)
    elif kind == "scatter":  # in_ptrs: the root's inputs, none elsewhere
        comm.scatter(call.in_ptrs, call.out_ptrs[0], call.count, call.code, call.root, stream)
    elif kind in ("all_to_all", "all_to_all_single"):  # the kernel shares the block sizes and checks the pairs
        comm.all_to_all(call.in_ptrs, call.in_counts, call.out_ptrs, call.out_counts, call.code, stream)
    else:
        comm.reduce(src, out, call.count, call.code, op, scale, call.root, stream)
    if blocking:
        return None
    return StreamWork(kind, _Checked(comm, ipc._DriverEvent(device, stream)),
                      lambda: ipc._driver.current_stream(dst.device, device))


def message(g: Any, call: Any, blocking: bool) -> Any:
    """A send or recv of a device array (checked by the collective layer) between two ranks of a
    group on the native path: on the pair's lane beside the caller's current stream (see
    _C.DeviceComm.send); None when `blocking` (the caller's stream then waits for it), else its
    core work; ipc.Declined where it is staged, which both ends of a message decide alike.

    Messages run natively once the group has set up its native path, at its first device
    collective. Before that they are staged, and a rank that staged one says so at the setup:
    its messages may still be on their way, so the whole group's messages stay staged (the two
    paths do not meet). Tagged messages are staged too (the lanes match in order, not by tag).
    As with NCCL: both ends must pass device arrays (a host array at one end meets nothing at
    the other); a blocking send of more than the receiver's inbox (two slots, scratch/world bytes)
    waits for its receive, so two ranks that both send first must use isend/irecv; and a pair
    must not run captured (graph) and eager messages to each other at the same time."""
    st = g.__dict__.get("_native")
    if st is None:
        with _lock:  # a setup on another thread reads the flag under it
            st = g.__dict__.get("_native")
            if st is None:
                g.__dict__["_staged_messages"] = True
                return ipc.Declined("the group has made no device collective yet")
    if type(st) is not _Native:
        return st
    if st.messages is not None:
        return st.messages
    if call.tag != 0:
        return ipc.Declined("tagged messages are staged")
    if call.peer < 0:
        raise ValueError(f"{call.where}: a receive of device arrays from any source cannot meet the group's "
                         "native messages (as with NCCL): name the source rank")
    st.comm.check()
    buf = call.reads[0] if call.kind == "send" else call.writes[0]
    device, stream = ipc._driver.placement(buf)
    _on_group_device(st, device, call.where)
    if call.kind == "send":
        work = st.comm.send(call.in_ptrs[0], call.count, call.code, call.peer, stream)
    else:
        work = st.comm.recv(call.out_ptrs[0], call.count, call.code, call.peer, stream)
    done = _Checked(st.comm, work)
    if blocking or ipc._driver.capturing(device, stream):  # a graph must join the lane before it ends
        done.stream_wait(stream)
        if blocking:
            return None
    w = StreamWork(call.kind, done, lambda: ipc._driver.current_stream(buf.device, device))
    if call.kind == "recv":
        w.source = call.peer
    return w


_FAST_OPS = {_C.OPS.index(name) for name in ("sum", "product", "min", "max", "avg")}
_FLOATS = {_C.DTYPES.index(name) for name in ("float16", "bfloat16", "float32", "float64")}
_BOOL = _C.DTYPES.index("bool")


_ITEMSIZE = {_C.DTYPES.index(name): dtype.itemsize for dtype, name in arrays._NUMPY_NAMES.items()}
_ITEMSIZE[_C.DTYPES.index("bfloat16")] = 2


def all_reduce_fast(g: Any, x: Any, op: int, out: Any = None) -> bool:
    """A blocking all_reduce of a plain array (into `out`, a plain array of the same dtype and
    size that does not overlap it, when given) on a group already on the native path: pointers,
    dtype and stream straight to the kernel launch. False (nothing done) for anything else,
    which the checked path then takes."""
    st = g.__dict__.get("_native")
    if type(st) is not _Native or op not in _FAST_OPS:
        return False
    try:
        a = ipc._driver.fast_array(x)
        b = a if out is None or a is None else ipc._driver.fast_array(out)
    except Exception:  # noqa: BLE001 - whatever it is, the checked path says it properly
        return False
    if a is None or b is None:
        return False
    ptr, count, code, dev, stream = a
    if dev != st.device or code == _BOOL or (op == _AVG and code not in _FLOATS):
        return False
    nbytes = count * _ITEMSIZE[code]
    if nbytes >= st.mapped_min:  # mapped per call: the checked path does that
        return False
    dst = b[0]
    if b is not a:  # out of place: the same shape of call, and disjoint (else the checked path says why)
        if b[1:] != a[1:] or (dst != ptr and dst < ptr + nbytes and ptr < dst + nbytes):
            return False
    st.comm.all_reduce(ptr, dst, count, code, op, 1.0 / g.size() if op == _AVG else 1.0, stream)
    return True


class Registration:
    """A device buffer that every rank of a group registered (plexus.register). An all_reduce of
    at least PLEXUS_DEVICE_DIRECT_MIN bytes (1 MiB) whose input and output lie in registered
    buffers reads and writes them in place: no staging copy. `zero_copy` is False (and `why`
    says why) where the group cannot map them; calls on the buffer then work as before."""

    def __init__(self, group: Any, obj: Any, window: Optional[int], mapped: list, why: str = ""):
        self.group, self.obj, self.window, self.mapped, self.why = group, obj, window, mapped, why

    @property
    def zero_copy(self) -> bool:
        return self.window is not None

    def __repr__(self) -> str:
        state = "zero-copy" if self.zero_copy else f"not zero-copy: {self.why}"
        return f"<plexus.Registration {self.group.name} {state}>"


def register(g: Any, buf: Any, where: str) -> Registration:
    """Collective: every rank registers its buffer of the same size (see Registration)."""
    device, _ = ipc._driver.placement(buf)
    st = _native(g, device)
    if not isinstance(st, _Native):
        return Registration(g, buf.obj, None, [], st.why)
    ok, handle, off, why = True, bytes(HANDLE), 0, ""
    try:
        if device != st.device:
            raise ValueError(f"the group's device collectives run on GPU {st.device}, the buffer is on GPU {device}")
        handle, off = ipc._driver.export(device, buf.ptr)
        handle = bytes(handle)
    except Exception as e:  # noqa: BLE001 - e.g. memory not from cudaMalloc: this rank says so
        ok, why = False, f"rank {g.ranks[g.rank()]} cannot export its buffer: {e}"
    rows = ipc.host_all_gather(g, bytes([ok]) + handle.ljust(HANDLE, b"\0") + struct.pack("<QQ", off, buf.nbytes))
    sizes = {struct.unpack_from("<QQ", row, 1 + HANDLE)[1] for row in rows}
    if len(sizes) > 1:
        raise ValueError(f"{where}: the ranks register buffers of different sizes ({sorted(sizes)} bytes)")
    if not all(row[0] for row in rows):
        bad = next(p for p, row in enumerate(rows) if not row[0])
        return Registration(g, buf.obj, None, [], why or f"rank {g.ranks[bad]} cannot export its buffer")
    peers, opened = [], []
    try:
        for p, row in enumerate(rows):
            if p == g.rank():
                peers.append(buf.ptr)
                continue
            base = ipc._driver.open(device, row[1:1 + HANDLE])
            opened.append(base)
            peers.append(base + struct.unpack_from("<Q", row, 1 + HANDLE)[0])
    except Exception as e:  # noqa: BLE001
        ok, why = False, f"rank {g.ranks[g.rank()]} cannot map its peers' buffers: {e}"
    if not all(row[0] for row in ipc.host_all_gather(g, bytes([ok]))):
        for base in opened:
            ipc._driver.close(device, base)
        return Registration(g, buf.obj, None, [], why or "a rank cannot map its peers' buffers")
    return Registration(g, buf.obj, st.comm.add_window(buf.ptr, buf.nbytes, peers), opened)


def deregister(reg: Registration) -> None:
    """Forgets a registration on this rank (after the GPU has finished what may use it)."""
    st = reg.group.__dict__.get("_native")
    if reg.window is None or not isinstance(st, _Native):
        return
    ipc._driver.synchronize_device(st.device)
    st.comm.remove_window(reg.window)
    for base in reg.mapped:
        ipc._driver.close(st.device, base)
    reg.window, reg.mapped, reg.why = None, [], "deregistered"


def abort(g: Any) -> None:
    """Makes the group's waiting kernels give up (their calls then raise)."""
    st = g.__dict__.get("_native")
    if isinstance(st, _Native):
        st.comm.abort()


def release(g: Any) -> None:
    """Waits for the GPU, then unmaps the peers' workspaces and frees this rank's. A message that
    has not finished is aborted first (its peer may never come: it would wait out its deadline)."""
    mapped.release(g)
    st = g.__dict__.pop("_native", None)
    if isinstance(st, _Native):
        try:
            if st.comm.messages_pending():
                st.comm.abort()
        except Exception:  # noqa: BLE001 - a forked child's group: nothing of it runs here
            pass
        try:
            ipc._driver.synchronize_device(st.device)
        except Exception:  # noqa: BLE001 - at exit the context may be gone
            pass
        del st


def explain(g: Any, nbytes: int) -> Optional[str]:
    """Which all_reduce program a call of `nbytes` takes on this group, and why (None before the
    group's first device call, or when it declined)."""
    st = g.__dict__.get("_native")
    return st.comm.explain_all_reduce(nbytes) if isinstance(st, _Native) else None
