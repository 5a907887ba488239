"""Device arrays (cupy arrays, torch CUDA tensors, any object with __cuda_array_interface__) in
the Python API, staged through host memory: correct first, fast later (CUDA IPC, issue 6).

    host_in, host_out, finish = staged([tensor], [tensor])   # device -> host, in stream order
    ...run the host collective on host_in / host_out...
    finish()                                                 # host -> device, on that stream

staged() copies the inputs to (pinned) host memory on the caller's current stream (cupy's
current stream, torch.cuda.current_stream()) and waits for them; finish() enqueues the copies
of the outputs back on that stream and returns without waiting, so later work on the stream
sees the result, as with NCCL. Arrays that share device memory share host memory too, so
in-place calls (an input that is a slice of the output) stay in place on the host.
@routed (route() with the ROUTES table) wraps a collective of distributed.py with all of this.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _C
from ._arrays import device_buffers
from ._cuda_ipc import PATHS, UseStaging
from ._device_ops import ops_for
from ._pinned import POOL
from ._work import Work

# __cuda_array_interface__ typestr (without byte order) -> plexus dtype name.
TYPESTRS = {"f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "u1": "uint8",
            "i4": "int32", "i8": "int64", "b1": "bool"}


def device_kind(x: Any) -> Optional[str]:
    """'torch' for a torch CUDA tensor, 'cupy' for a cupy array or any other object with
    __cuda_array_interface__, None for everything else (numpy arrays, CPU tensors, ...)."""
    if type(x) is np.ndarray or x is None:  # the common case, first
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch" if x.is_cuda else None
    try:
        return "cupy" if hasattr(x, "__cuda_array_interface__") else None
    except Exception:  # noqa: BLE001 - a property that raises something else: not a device array
        return None


def has_device(values: Any) -> bool:
    """Whether any value (or any entry of a list/tuple value) is a device array."""
    for v in values:
        if isinstance(v, (list, tuple)):
            if has_device(v):
                return True
        elif device_kind(v) is not None:
            return True
    return False


class DeviceArray:
    """One device array as staging sees it."""

    __slots__ = ("obj", "kind", "ptr", "nbytes", "dtype", "shape", "readonly", "name", "itemsize")

    def __init__(self, obj, kind, ptr, nbytes, dtype, shape, readonly, name, itemsize):
        self.obj, self.kind, self.ptr, self.nbytes = obj, kind, ptr, nbytes
        self.dtype, self.shape, self.readonly, self.name = dtype, shape, readonly, name
        self.itemsize = itemsize


def _c_contiguous(shape: tuple, strides: Optional[tuple], itemsize: int) -> bool:
    if strides is None or 0 in shape:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _unsupported(name: str, dtype: str) -> TypeError:
    return TypeError(f"{name} has dtype {dtype}, which plexus does not support; supported: {', '.join(_C.DTYPES)}")


def describe(x: Any, name: str) -> DeviceArray:
    """Address, size, dtype and shape of a device array; TypeError/ValueError naming `name` when
    plexus cannot use it (dtype, layout)."""
    kind = device_kind(x)
    if kind == "torch":
        dtype = str(x.dtype).replace("torch.", "")
        if dtype not in _C.DTYPES:
            raise _unsupported(name, dtype)
        if x.layout != sys.modules["torch"].strided:
            raise TypeError(f"{name} is not a dense tensor")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous (use tensor.contiguous())")
        return DeviceArray(x, kind, x.data_ptr(), x.numel() * x.element_size(), dtype, tuple(x.shape), False, name,
                           x.element_size())
    if kind is None:
        raise TypeError(f"{name} is not a device array")
    cai = x.__cuda_array_interface__
    typestr = cai["typestr"]
    dtype = TYPESTRS.get(typestr[1:]) if typestr[:1] in "<|=" else None
    if dtype is None:
        raise _unsupported(name, typestr)
    if cai.get("mask") is not None:
        raise ValueError(f"{name} is a masked array")
    shape = tuple(int(d) for d in cai["shape"])
    itemsize = int(typestr[2:])
    strides = cai.get("strides")
    if not _c_contiguous(shape, None if strides is None else tuple(strides), itemsize):
        raise ValueError(f"{name} must be C-contiguous (use cupy.ascontiguousarray)")
    ptr, readonly = cai["data"]
    return DeviceArray(x, kind, int(ptr), math.prod(shape) * itemsize, dtype, shape,
                       bool(readonly), name, itemsize)


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


def _leaves(tree: Any, name: str, out: List[Tuple[str, Any]]) -> None:
    if isinstance(tree, (list, tuple)):
        for i, t in enumerate(tree):
            _leaves(t, f"{name}[{i}]", out)
    elif tree is not None:
        out.append((name, tree))


def _rebuild(tree: Any, mirrors: Dict[int, Any]) -> Any:
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuild(t, mirrors) for t in tree)
    return mirrors.get(id(tree), tree)


class _Stage:
    """The host copies of one call's device arrays, until finish()."""

    def __init__(self, named_in: List[Tuple[str, Any]], named_out: List[Tuple[str, Any]], what: str,
                 overwrite_outputs: bool):
        leaves_in: List[Tuple[str, Any]] = []
        leaves_out: List[Tuple[str, Any]] = []
        for name, tree in named_in:
            _leaves(tree, name, leaves_in)
        for name, tree in named_out:
            _leaves(tree, name, leaves_out)
        where = f"{what}: " if what else ""
        arrays: Dict[int, DeviceArray] = {}  # id -> description, each array once
        host_names = []
        for name, x in leaves_in + leaves_out:
            if id(x) in arrays:
                continue
            if device_kind(x) is None:
                host_names.append(name)
            else:
                arrays[id(x)] = describe(x, where + name)
        if host_names and arrays:
            dev = next(iter(arrays.values())).name
            raise TypeError(f"{dev} is a device array but {host_names[0]} is not: "
                            "pass every array of a call on the same device")
        self.done = not arrays
        self.lock = threading.Lock()
        self.mirrors: Dict[int, Any] = {}
        self.back: Dict[int, Any] = {}  # id(host mirror) -> device array
        if self.done:
            return
        out_ids = {id(x) for _, x in leaves_out}
        in_ids = {id(x) for _, x in leaves_in}
        for a in arrays.values():
            if id(a.obj) in out_ids and a.readonly:
                raise ValueError(f"{a.name} is read-only but receives the result")
        self.arrays = list(arrays.values())
        self.outputs = [a for a in self.arrays if id(a.obj) in out_ids]
        # What the call only writes need not be read first, when it writes every byte.
        self._stage_in({i for i in arrays if i in in_ids or not overwrite_outputs})

    def _stage_in(self, read_ids: set) -> None:
        self.handles = {}  # id -> library object to copy through (cupy wraps foreign arrays)
        devices = set()
        for a in self.arrays:
            ops = ops_for(a.kind)
            h = self.handles[id(a.obj)] = ops.wrap(a.obj)
            devices.add(ops.device_of(h))
        if len(devices) > 1:
            raise ValueError(f"{self.arrays[0].name}: the arrays of one call are on several GPUs {sorted(devices)}")
        device = devices.pop()
        self.streams = {k: ops_for(k).current_stream(device) for k in {a.kind for a in self.arrays}}
        regions, of = plan_regions([(a.ptr, a.nbytes) for a in self.arrays])
        kinds = ["cupy"] * len(regions)
        for a, r in zip(self.arrays, of):
            if r >= 0 and a.kind == "torch":
                kinds[r] = "torch"  # torch copies need a torch-allocated (pinned) block
        self.blocks = [POOL.acquire(k, end - start, ops_for(k).alloc_host) for k, (start, end) in zip(kinds, regions)]
        self.place = {}  # id -> (block, offset)
        for a, r in zip(self.arrays, of):
            if r >= 0:
                self.place[id(a.obj)] = (self.blocks[r], a.ptr - regions[r][0])
        for a in self.arrays:
            if a.nbytes and id(a.obj) in read_ids:
                block, off = self.place[id(a.obj)]
                ops_for(a.kind).to_host(block, off, self.handles[id(a.obj)], a.ptr, a.nbytes, self.streams[a.kind])
        for kind, stream in self.streams.items():
            ops_for(kind).synchronize(stream)  # the caller's earlier work and these copies
        for a in self.arrays:
            h = self.handles[id(a.obj)]
            if a.nbytes:
                block, off = self.place[id(a.obj)]
                m = ops_for(a.kind).mirror(block, off, a.nbytes, h, a.dtype, a.shape)
            else:
                m = _empty_mirror(a, h)
            self.mirrors[id(a.obj)] = m
            self.back[id(m)] = a.obj

    def finish(self, ok: bool = True) -> None:
        """Copies the outputs back on the caller's stream (when ok) and recycles the host memory.
        After a failure the host memory is dropped, not reused: the op may not have let go."""
        with self.lock:
            if self.done:
                return
            self.done = True
        if not ok:
            return
        for a in self.outputs:
            if a.nbytes:
                block, off = self.place[id(a.obj)]
                ops_for(a.kind).to_device(self.handles[id(a.obj)], a.ptr, block, off, a.nbytes, self.streams[a.kind])
        events = [ops_for(k).record(s) for k, s in self.streams.items()]
        event = events[0] if len(events) == 1 else _AllDone(events)
        for b in self.blocks:
            POOL.release(b, event)


class _AllDone:
    def __init__(self, events):
        self.events = events

    def done(self) -> bool:
        return all(e.done() for e in self.events)


def _empty_mirror(a: DeviceArray, h: Any) -> Any:
    if a.kind == "torch":
        return sys.modules["torch"].empty(a.shape, dtype=h.dtype)
    return np.empty(a.shape, dtype=np.dtype(a.dtype))  # no bfloat16 here: CAI cannot say it


def staged(arrays_in: Sequence[Any], arrays_out: Sequence[Any] = (), what: str = "",
           overwrite_outputs: bool = False) -> Tuple[list, list, Callable[..., None]]:
    """Host copies of a call's arrays: (host_in, host_out, finish).

    `arrays_in` are read by the call, `arrays_out` written (an array may be in both); entries may
    be arrays, None, or lists/tuples of arrays, and come back with the same structure, device
    arrays replaced by host arrays of the same dtype and shape (numpy for cupy, pinned CPU
    tensors for torch). Host arrays pass through untouched; mixing them with device arrays is a
    TypeError. With overwrite_outputs=True, arrays only in `arrays_out` are not copied to the host
    first (use it when the call writes every byte of them). Call finish() once the call has
    completed; finish(ok=False) after it failed (the device arrays are then left as they were).
    """
    stage = _Stage([(f"input {i}", x) for i, x in enumerate(arrays_in)],
                   [(f"output {i}", x) for i, x in enumerate(arrays_out)], what, overwrite_outputs)
    return _rebuild(list(arrays_in), stage.mirrors), _rebuild(list(arrays_out), stage.mirrors), stage.finish


class _FinishOnWait:
    """A core Work whose wait() also finishes the staging (copies the outputs back)."""

    __slots__ = ("core", "finish")

    def __init__(self, core: Any, finish: Callable[..., None]):
        self.core, self.finish = core, finish

    def wait(self, timeout: Optional[float] = None) -> bool:
        try:
            ok = self.core.wait(timeout)
        except BaseException:
            self.finish(ok=False)
            raise
        if ok:
            self.finish()
        return ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def _any_device(v: Any) -> bool:
    """has_device() for one argument, fast for host arrays (the hot path of CPU collectives)."""
    t = type(v)
    if t is np.ndarray or v is None:
        return False
    if t is list or t is tuple:
        for e in v:
            if type(e) is not np.ndarray and _any_device(e):
                return True
        return False
    return device_kind(v) is not None


# What each public collective of distributed.py reads and writes, for routed(). "out|tensor":
# `out` when given, else `tensor`. Arguments only written are written in full by the call.
ROUTES = {
    "all_reduce": (("tensor",), ("out|tensor",)),
    "all_gather": (("tensor",), ("tensor_list",)),
    "all_gather_into_tensor": (("input_tensor",), ("output_tensor",)),
    "reduce_scatter": (("input_list",), ("output",)),
    "reduce_scatter_tensor": (("input",), ("output",)),
    "broadcast": (("tensor",), ("tensor",)),
    "reduce": (("tensor",), ("tensor",)),
    "gather": (("tensor",), ("gather_list",)),
    "scatter": (("scatter_list",), ("tensor",)),
    "all_to_all": (("input_tensor_list",), ("output_tensor_list",)),
    "all_to_all_single": (("input",), ("output",)),
    "send": (("tensor",), ()),
    "isend": (("tensor",), ()),
    "recv": ((), ("tensor",)),
    "irecv": ((), ("tensor",)),
}


# Collectives that take device arrays as they are (CUDA IPC between the ranks of one host, see
# _cuda_ipc.py) and stage them only when the group cannot do that.
IN_PLACE_ON_DEVICE = {"_all_reduce_checked", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
                      "reduce"}


def routed(fn: Callable) -> Callable:
    """@routed on a collective named in ROUTES: route() with its inputs and outputs."""
    inputs, outputs = ROUTES[fn.__name__]
    return route(inputs, outputs)(fn)


def route(inputs: Sequence[str] = (), outputs: Sequence[str] = ()):
    """Decorator for a public collective: a call given device arrays runs on host copies of them
    (see staged()) and its outputs are copied back when it completes (at once, or in Work.wait()
    for async_op=True / isend / irecv). `inputs` and `outputs` name the arguments it reads and
    writes; an output "a|b" is `a` when given, else `b`. An argument only in `outputs` must be
    written in full by the call (it is not copied to the host first).

    Host calls cost nothing extra: the wrapped function runs first, and only when it raises
    TypeError are the named arguments looked at; with a device array among them the call runs
    again on host copies. This relies on the function checking all its arrays (as_buffer)
    before it communicates, which every collective of distributed.py does."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        outs = [tuple(o.split("|")) for o in outputs]
        names = list(dict.fromkeys(list(inputs) + [n for alts in outs for n in alts]))
        unknown = [n for n in names if n not in sig.parameters]
        if unknown:
            raise TypeError(f"route({fn.__name__}): no parameters {unknown}")
        positional = {p.name: i for i, p in enumerate(sig.parameters.values()) if p.kind is p.POSITIONAL_OR_KEYWORD}
        where = tuple((positional.get(n, 1 << 30), n) for n in names)
        direct = fn.__name__ in IN_PLACE_ON_DEVICE

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Host arrays first, at no cost: distributed.py checks every array before it submits
            # anything and refuses device arrays with a TypeError; only then are they staged.
            try:
                return fn(*args, **kwargs)
            except TypeError:
                nargs = len(args)
                if not any(_any_device(args[i] if i < nargs else kwargs.get(n)) for i, n in where):
                    raise
            if direct:
                try:
                    with device_buffers():
                        return fn(*args, **kwargs)
                except UseStaging as e:
                    PATHS[f"staged: {e}"] += 1
            bound = sig.bind(*args, **kwargs)
            given = {n: v for n, v in bound.arguments.items() if n in names and v is not None}
            written = [next((n for n in alts if n in given), None) for alts in outs]
            stage = _Stage([(n, given[n]) for n in inputs if n in given],
                           [(n, given[n]) for n in written if n is not None], fn.__name__, True)
            for n, v in given.items():
                bound.arguments[n] = _rebuild(v, stage.mirrors)
            try:
                result = fn(*bound.args, **bound.kwargs)
            except BaseException:
                stage.finish(ok=False)
                raise
            if isinstance(result, Work):
                result._core = _FinishOnWait(result._core, stage.finish)
                result._outputs = _rebuild_back(result._outputs, stage.back)
            else:
                stage.finish()
            return result

        wrapper.__plexus_device_routed__ = True
        return wrapper

    return deco


def _rebuild_back(tree: Any, back: Dict[int, Any]) -> Any:
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuild_back(t, back) for t in tree)
    return back.get(id(tree), tree)
