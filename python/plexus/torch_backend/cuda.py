"""CUDA tensors in the plexus process group.

@on_cuda wraps a collective of PlexusProcessGroup written for CPU tensors. A call with CPU
tensors costs nothing extra (the method runs first; its buffer() refuses CUDA tensors with a
TypeError, and only then are the arguments looked at). With CUDA tensors:

- allreduce, allgather, all_gather_into_tensor (_allgather_base), reduce_scatter_tensor
  (_reduce_scatter_base), broadcast and reduce run through CUDA IPC when the group sits on one host (plexus._cuda_ipc):
  enqueued on the current stream, zero-copy, Work.wait() makes the current stream wait;
  allreduce elsewhere is staged in chunks whose copies overlap the network (_device_pipeline);
- everything else, and those when IPC cannot be used (several hosts, memory that cannot be
  exported, complex dtypes), runs on pinned host copies: the inputs are copied on the current
  stream and waited for, the CPU op runs to completion, and the outputs (the first argument, as
  torch orders them) are copied back on the current stream. Point-to-point calls do not block:
  a staged receive copies its bytes to the device when it completes. Correct, not fast: the
  proxy thread that overlaps copies with the network is not built yet.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict

import torch
import torch.distributed as dist

from .. import _cuda_ipc, _device_pipeline
from .._arrays import device_buffers
from . import ops
from .ops import buffer, one, reduce_op


def _any_cuda(values: Any) -> bool:
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.is_cuda:
                return True
        elif isinstance(v, (list, tuple)) and _any_cuda(v):
            return True
    return False


class _IpcGroup:
    """What plexus._cuda_ipc needs of a group, over the process group's communicator."""

    def __init__(self, pg: Any):
        self.comm = pg.comm
        self.ranks = list(pg._global_ranks) or list(range(pg.size()))

    def size(self) -> int:
        return self.comm.size

    def rank(self) -> int:
        return self.comm.rank


def ipc_group(pg: Any) -> _IpcGroup:
    g = pg.__dict__.get("_ipc_group")
    if g is None:
        g = pg.__dict__["_ipc_group"] = _IpcGroup(pg)
    return g


def release(pg: Any) -> None:
    g = pg.__dict__.pop("_ipc_group", None)
    if g is not None:
        _cuda_ipc.release(g)


def _device_buffer(t: Any, what: str, code: int = -1) -> Any:
    """buffer() of a CUDA tensor for the IPC path, with the CPU path's checks (their TypeError /
    ValueError is the caller's mistake, raised as the CPU path raises it)."""
    with device_buffers():
        b = buffer(t, what, code)
    if b.device is None:
        raise TypeError(f"{what} and the other tensors of the call must all be CUDA tensors")
    return b


def _ipc_allreduce(pg: Any, tensors: Any, opts: Any = None) -> Any:
    where = pg._where("allreduce")
    pg._check_open(where)
    opts = opts if opts is not None else dist.AllreduceOptions()
    t = one(tensors, where)
    code, factor = reduce_op(opts.reduceOp, where)
    b = _device_buffer(t, f"{where}: tensor", code)
    ops.check_op_dtype(where, code, b)  # here, not in the kernel of only some ranks
    try:
        core = _cuda_ipc.run(ipc_group(pg), "all_reduce", where, b, b, code, factor, async_op=True)._core
    except _cuda_ipc.UseStaging as e:  # through host memory, copies overlapping the network
        core = _device_pipeline.all_reduce(ipc_group(pg), where, b, b, code, factor, str(e))
    return pg._work(where, [core], tensors, tensors)


def _ipc_all_gather_single(pg: Any, output: Any, input: Any, opts: Any = None) -> Any:
    where = pg._where("all_gather_into_tensor")
    pg._check_open(where)
    with device_buffers():
        pg._ag_single(where, output, input)  # the checks of the CPU path
    src, dst = _device_buffer(input, f"{where}: input"), _device_buffer(output, f"{where}: output")
    w = _cuda_ipc.run(ipc_group(pg), "all_gather_into_tensor", where, src, dst, async_op=True)
    return pg._work(where, [w._core], [output], (output, input))


def _ipc_reduce_scatter_single(pg: Any, output: Any, input: Any, opts: Any = None) -> Any:
    where = pg._where("reduce_scatter_tensor")
    pg._check_open(where)
    opts = opts if opts is not None else dist.ReduceScatterOptions()
    code, factor = reduce_op(opts.reduceOp, where)
    with device_buffers():
        pg._rs_single(where, output, input, code)
    src, dst = _device_buffer(input, f"{where}: input", code), _device_buffer(output, f"{where}: output", code)
    ops.check_op_dtype(where, code, dst)
    w = _cuda_ipc.run(ipc_group(pg), "reduce_scatter_tensor", where, src, dst, code, factor, async_op=True)
    return pg._work(where, [w._core], [output], (output, input))


def _ipc_broadcast(pg: Any, tensors: Any, opts: Any = None) -> Any:
    where = pg._where("broadcast")
    pg._check_open(where)
    opts = opts if opts is not None else dist.BroadcastOptions()
    t = one(tensors, where)
    b = _device_buffer(t, f"{where}: tensor")
    w = _cuda_ipc.run(ipc_group(pg), "broadcast", where, b, b, async_op=True, root=int(opts.rootRank))
    return pg._work(where, [w._core], tensors, tensors)


def _ipc_reduce(pg: Any, tensors: Any, opts: Any) -> Any:
    where = pg._where("reduce")
    pg._check_open(where)
    t = one(tensors, where)
    code, factor = reduce_op(opts.reduceOp, where)
    b = _device_buffer(t, f"{where}: tensor", code)
    ops.check_op_dtype(where, code, b)
    w = _cuda_ipc.run(ipc_group(pg), "reduce", where, b, b, code, factor, async_op=True, root=int(opts.rootRank))
    return pg._work(where, [w._core], tensors, tensors)


def _ipc_allgather(pg: Any, output_lists: Any, inputs: Any, opts: Any = None) -> Any:
    where = pg._where("allgather")
    pg._check_open(where)
    inp = one(inputs, where, "input_tensors")
    outs = one(output_lists, where, "output_tensor_lists")
    with device_buffers():
        _, ptrs = pg._gather_plan(where, outs, inp, "output_tensors")  # the checks of the CPU path
    for i, t in enumerate(outs):
        _device_buffer(t, f"{where}: output_tensors[{i}]")
    src = _device_buffer(inp, f"{where}: input_tensor")
    w = _cuda_ipc.run(ipc_group(pg), "all_gather", where, src, src, async_op=True, outs=ptrs)
    return pg._work(where, [w._core], output_lists, (output_lists, inputs))


_IPC: Dict[str, Callable] = {
    "allgather": _ipc_allgather,
    "broadcast": _ipc_broadcast,
    "reduce": _ipc_reduce,
    "allreduce": _ipc_allreduce,
    "all_gather_single": _ipc_all_gather_single,
    "reduce_scatter_single": _ipc_reduce_scatter_single,
}


def on_cuda(method: Callable) -> Callable:
    """Decorator for a collective of PlexusProcessGroup (see the module's text)."""
    ipc = _IPC.get(method.__name__)
    writes_first = method.__name__ != "send"

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except TypeError:
            if not (_any_cuda(args) or _any_cuda(kwargs.values())):
                raise
        if ipc is not None:
            try:
                return ipc(self, *args, **kwargs)
            except _cuda_ipc.UseStaging as e:  # every rank alike
                _cuda_ipc.PATHS[f"staged: {e}"] += 1
        return _staged(self, method, args, kwargs, writes_first)

    return wrapper


def _staged(pg: Any, method: Callable, args: tuple, kwargs: dict, writes_first: bool) -> Any:
    host: Dict[int, torch.Tensor] = {}
    originals: Dict[int, torch.Tensor] = {}

    def to_host(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_cuda:
            c = host.get(id(v))
            if c is None:
                try:
                    c = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                except RuntimeError:  # pinning can fail (ulimit -l): pageable still works
                    c = torch.empty(v.shape, dtype=v.dtype)
                with torch.cuda.device(v.device):
                    c.copy_(v, non_blocking=True)  # on v's device's current stream
                host[id(v)], originals[id(c)] = c, v
            return c
        if isinstance(v, (list, tuple)):
            return type(v)(to_host(x) for x in v)
        return v

    host_args = [to_host(a) for a in args]
    host_kwargs = {k: to_host(v) for k, v in kwargs.items()}
    for dev in {t.device for t in originals.values()}:
        torch.cuda.current_stream(dev).synchronize()  # the copies, and the caller's work before them
    work = method(pg, *host_args, **host_kwargs)
    outs = [(t, host[id(t)]) for t in _tensors(args[0]) if t.is_cuda] if writes_first and args else []
    result = _swap(work._result, originals)
    if work._p2p:
        # Point-to-point never blocks (batch_isend_irecv posts both sides before waiting): the
        # received bytes go to the device once the receive is done.
        cores = [_CopyBack(c, outs) if c is not None else None for c in work._cores]
        return type(work)(cores, result, host_args, pg, work._what, True)
    work.wait()  # raises the op's error; the device tensors are left as they were
    _copy_back(outs, synchronize=False)
    return type(work)(work._cores, result, None, pg, work._what, work._p2p)


def _copy_back(outs: list, synchronize: bool) -> None:
    for t, h in outs:
        with torch.cuda.device(t.device):
            t.copy_(h, non_blocking=True)  # on the current stream; pinned: torch keeps h until copied
            if synchronize:
                torch.cuda.current_stream(t.device).synchronize()


class _CopyBack:
    """A core work of a staged receive: once the host op is done, its output is copied to the
    device (and waited for, since whichever thread sees it done may not be the caller's)."""

    def __init__(self, core: Any, outs: list):
        self.core, self.outs, self.copied = core, outs, False
        self.lock = threading.Lock()

    def _finish(self) -> None:
        with self.lock:
            if not self.copied:
                self.copied = True
                _copy_back(self.outs, synchronize=True)

    def is_completed(self) -> bool:
        if self.copied:
            return True
        if not self.core.is_completed():
            return False
        if not self.core.failed():
            self._finish()
        return True

    def wait(self, timeout: Any = None) -> bool:
        if not self.core.wait(timeout):  # raises the op's error
            return False
        self._finish()
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def _tensors(v: Any):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)


def _swap(v: Any, back: Dict[int, torch.Tensor]) -> Any:
    if isinstance(v, torch.Tensor):
        return back.get(id(v), v)
    if isinstance(v, (list, tuple)):
        return type(v)(_swap(x, back) for x in v)
    return v
