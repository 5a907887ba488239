"""PlexusProcessGroup: a torch.distributed ProcessGroup whose collectives run in the plexus core.

torch 2.13 cannot take a Python `Backend` (no constructor), so this subclasses
torch.distributed.ProcessGroup: the creator returns it and it *is* the group. torch's Python API
calls these methods directly; C++ callers (DDP's Reducer, functional collectives) reach them
through PyTorch's trampoline. Method names are the ones torch 2.13 calls, with the older names
as aliases. Ranks (roots, peers) are group ranks, as torch hands them.

Every call checks its tensors on the calling rank before anything is sent (TypeError /
ValueError), then submits zero-copy core ops (CUDA tensors: see cuda.py, @on_cuda): synchronous calls (opts.asyncOp False) run on
the calling thread; errors found while running (size mismatch between ranks, a dead peer, a
timeout) surface from Work.wait() as plexus.PlexusError, a RuntimeError.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

from .. import _C
from .._arrays import check_disjoint
from .._stores import TorchStore, generation_prefix, route_address
from . import cuda, ops
from .cuda import on_cuda
from .ops import buffer, buffers, one, reduce_op, same_dtype, split_counts
from .work import Completer, Work

BACKEND_NAME = "plexus"


def _address_hint(store: Any) -> str:
    """The local IP that reaches torch's TCPStore host: the core listens and advertises there."""
    s = store
    for _ in range(16):
        inner = getattr(s, "underlying_store", None)
        if inner is None:
            break
        s = inner
    host, port = getattr(s, "host", None), getattr(s, "port", None)
    if isinstance(host, str) and host:
        return route_address(host, int(port or 1))
    return ""  # FileStore/HashStore: the core falls back to PLEXUS_SOCKET_IFNAME or loopback


def _seconds(timeout: Any) -> float:
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout) if timeout is not None else 1800.0
    return timeout if timeout > 0 else 1800.0


class PlexusProcessGroup(dist.ProcessGroup):
    """A torch process group backed by one plexus Communicator."""

    def __init__(self, store: Any, rank: int, size: int, timeout: Any = None,
                 global_ranks: Optional[Sequence[int]] = None, group_id: str = "", options: Any = None):
        dist.ProcessGroup.__init__(self, rank, size)
        self._gname = str(group_id)
        self._gdesc = ""
        self._options = options
        self._timeout = _seconds(timeout)
        self._global_ranks = list(global_ranks or [])
        self._global_rank = self._global_ranks[rank] if self._global_ranks else rank
        self._where_cache: dict = {}
        self._inflight: List[tuple] = []  # (core works, tensors) until they complete
        self._lock = threading.Lock()
        self._closed = False
        if not self._global_ranks:
            _C.set_log_rank(rank)  # the default group: its ranks are the global ranks
        # torch's store is already namespaced per group; the generation keeps a re-initialized
        # group (same name, same store) from reading the keys of an earlier one.
        self._torch_store = TorchStore(store, _address_hint(store))
        core_store = generation_prefix(self._torch_store, rank, "torch")
        self._comm = _C.Communicator(core_store, rank, size, self._timeout, self._global_ranks)
        self._completer = Completer(self._gname or "pg")

    # -- identity (the C++ base keeps names in per-device Backends, which a Python PG lacks) --
    def getBackendName(self) -> str:
        return BACKEND_NAME

    def setGroupName(self, name: str) -> None:
        self._gname = name

    def getGroupName(self) -> str:
        return self._gname

    def setGroupDesc(self, desc: str) -> None:
        self._gdesc = desc

    def getGroupDesc(self) -> str:
        return self._gdesc

    @property
    def group_name(self) -> str:
        return self._gname

    @property
    def group_desc(self) -> str:
        return self._gdesc

    @property
    def comm(self) -> "_C.Communicator":
        """The plexus core communicator of this group."""
        return self._comm

    def __repr__(self) -> str:
        return f"<PlexusProcessGroup {self._gname!r} rank {self.rank()} of {self.size()}>"

    # -- plumbing ---------------------------------------------------------------------------
    def _where(self, call: str) -> str:
        w = self._where_cache.get(call)
        if w is None:
            w = self._where_cache[call] = f"plexus {call} on rank {self._global_rank}"
        return w

    def _check_open(self, where: str) -> None:
        if self._closed:
            raise _C.PlexusError(f"{where}: the process group was shut down")

    def _work(self, what: str, cores: List[Any], result: Any, keep: Any, p2p: bool = False) -> Work:
        live = [c for c in cores if c is not None]
        if live:
            with self._lock:  # DDP submits from autograd threads too
                inflight = self._inflight
                if len(inflight) >= 16:
                    inflight[:] = [e for e in inflight if not all(c.is_completed() for c in e[0])]
                inflight.append((live, keep))
        return Work(cores, result, keep, self, what, p2p)

    # -- reductions -------------------------------------------------------------------------
    @on_cuda
    def allreduce(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allreduce")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllreduceOptions()
        t = one(tensors, where)
        code, factor = reduce_op(opts.reduceOp, where)
        b = buffer(t, f"{where}: tensor", code)
        w = self._comm.all_reduce(b.ptr, b.ptr, b.count, b.code, code, factor, not opts.asyncOp)
        return self._work(where, [w], tensors, tensors)

    @on_cuda
    def allreduce_coalesced(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allreduce_coalesced")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllreduceCoalescedOptions()
        code, factor = reduce_op(opts.reduceOp, where)
        bufs = [buffer(t, f"{where}: tensors[{i}]", code) for i, t in enumerate(tensors)]
        for b in bufs:
            ops.check_op_dtype(where, code, b)
        cores = [self._comm.all_reduce(b.ptr, b.ptr, b.count, b.code, code, factor, False) for b in bufs]
        return self._work(where, cores, list(tensors), list(tensors))

    @on_cuda
    def reduce(self, tensors: List[torch.Tensor], opts: Any) -> Work:
        # Like plexus.reduce: only the root's tensor changes (gloo may scribble on the others'
        # tensors, whose content torch leaves unspecified).
        where = self._where("reduce")
        self._check_open(where)
        t = one(tensors, where)
        code, factor = reduce_op(opts.reduceOp, where)
        b = buffer(t, f"{where}: tensor", code)
        w = self._comm.reduce(b.ptr, b.ptr, b.count, b.code, code, factor, opts.rootRank, not opts.asyncOp)
        return self._work(where, [w], tensors, tensors)

    def _reduce_scatter_one(self, where: str, out: torch.Tensor, ins: List[torch.Tensor], code: int,
                            factor: float) -> tuple:
        """(output buffer, input block addresses) of one reduce-scatter, checked."""
        dst = buffer(out, f"{where}: output", code)
        srcs = buffers(ins, "input_list", where, self.size(), out, "output", code)
        for i, s in enumerate(srcs):
            if s.overlaps(dst) and not (i == self.rank() and s.ptr == dst.ptr):
                raise ValueError(f"{where}: output overlaps input_list[{i}]")
        return dst, [s.ptr for s in srcs]

    @on_cuda
    def reduce_scatter(self, outputs: List[torch.Tensor], input_lists: List[List[torch.Tensor]], opts: Any) -> Work:
        where = self._where("reduce_scatter")
        self._check_open(where)
        out = one(outputs, where, "output_tensors")
        ins = one(input_lists, where, "input_lists")
        code, factor = reduce_op(opts.reduceOp, where)
        dst, ptrs = self._reduce_scatter_one(where, out, ins, code, factor)
        w = self._comm.reduce_scatter(ptrs, dst.ptr, dst.count, dst.code, code, factor, not opts.asyncOp)
        return self._work(where, [w], outputs, [outputs, input_lists])

    def _rs_single(self, where: str, output: torch.Tensor, input: torch.Tensor, code: int) -> tuple:
        dst = buffer(output, f"{where}: output", code)
        src = buffer(input, f"{where}: input", code)
        same_dtype(where, output, input, "input", "output")
        n = self.size()
        if src.count != dst.count * n:
            raise ValueError(f"{where}: input has {input.numel()} elements but must have {n} x {output.numel()} "
                             "(world size x output)")
        blocks = [src.ptr + i * dst.nbytes for i in range(n)]
        if dst.overlaps(src) and dst.ptr != blocks[self.rank()]:
            raise ValueError(f"{where}: output overlaps input but is not this rank's block of it")
        return dst, blocks

    @on_cuda
    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        where = self._where("reduce_scatter_tensor")
        self._check_open(where)
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        code, factor = reduce_op(opts.reduceOp, where)
        dst, blocks = self._rs_single(where, output, input, code)
        w = self._comm.reduce_scatter(blocks, dst.ptr, dst.count, dst.code, code, factor, not opts.asyncOp)
        return self._work(where, [w], [output], (output, input))

    @on_cuda
    def reduce_scatter_single_coalesced(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor],
                                        opts: Any = None) -> Work:
        where = self._where("reduce_scatter_tensor_coalesced")
        self._check_open(where)
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        if len(outputs) != len(inputs):
            raise ValueError(f"{where}: {len(outputs)} outputs but {len(inputs)} inputs")
        code, factor = reduce_op(opts.reduceOp, where)
        plans = [self._rs_single(where, o, i, code) for o, i in zip(outputs, inputs)]
        for dst, _ in plans:
            ops.check_op_dtype(where, code, dst)
        cores = [self._comm.reduce_scatter(blocks, dst.ptr, dst.count, dst.code, code, factor, False)
                 for dst, blocks in plans]
        return self._work(where, cores, list(outputs), (list(outputs), list(inputs)))

    # -- gathers ----------------------------------------------------------------------------
    def _gather_plan(self, where: str, outs: List[torch.Tensor], inp: torch.Tensor, argname: str) -> tuple:
        src = buffer(inp, f"{where}: input_tensor")
        dsts = buffers(outs, argname, where, self.size(), inp, "the input tensor")
        for i, b in enumerate(dsts):
            if b.overlaps(src) and not (i == self.rank() and b.ptr == src.ptr):
                raise ValueError(f"{where}: {argname}[{i}] overlaps the input tensor")
        return src, [b.ptr for b in dsts]

    @on_cuda
    def allgather(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allgather")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllgatherOptions()
        inp = one(inputs, where, "input_tensors")
        outs = one(output_lists, where, "output_tensor_lists")
        src, ptrs = self._gather_plan(where, outs, inp, "output_tensors")
        w = self._comm.all_gather(src.ptr, ptrs, src.count, src.code, not opts.asyncOp)
        return self._work(where, [w], output_lists, (output_lists, inputs))

    @on_cuda
    def allgather_coalesced(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor],
                            opts: Any = None) -> Work:
        """output_lists[r][i] receives rank r's inputs[i] (torch's all_gather_coalesced)."""
        where = self._where("allgather_coalesced")
        self._check_open(where)
        n = self.size()
        if len(output_lists) != n:
            raise ValueError(f"{where}: output_tensor_lists has {len(output_lists)} lists but the group has {n} ranks")
        for r, lst in enumerate(output_lists):
            if len(lst) != len(inputs):
                raise ValueError(f"{where}: output_tensor_lists[{r}] has {len(lst)} tensors but input_tensor_list "
                                 f"has {len(inputs)}")
        plans = [self._gather_plan(where, [output_lists[r][i] for r in range(n)], t, f"output_tensor_lists[*][{i}]")
                 for i, t in enumerate(inputs)]
        cores = [self._comm.all_gather(src.ptr, ptrs, src.count, src.code, False) for src, ptrs in plans]
        return self._work(where, cores, output_lists, (output_lists, inputs))

    def _ag_single(self, where: str, output: torch.Tensor, input: torch.Tensor) -> tuple:
        src = buffer(input, f"{where}: input")
        dst = buffer(output, f"{where}: output")
        same_dtype(where, input, output, "output", "input")
        n = self.size()
        if dst.count != src.count * n:
            raise ValueError(f"{where}: output has {output.numel()} elements but must have {n} x {input.numel()} "
                             "(world size x input)")
        slots = [dst.ptr + i * src.nbytes for i in range(n)]
        if src.overlaps(dst) and src.ptr != slots[self.rank()]:
            raise ValueError(f"{where}: input overlaps output but is not this rank's slice of it")
        return src, slots

    @on_cuda
    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        where = self._where("all_gather_into_tensor")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllgatherOptions()
        src, slots = self._ag_single(where, output, input)
        w = self._comm.all_gather(src.ptr, slots, src.count, src.code, not opts.asyncOp)
        return self._work(where, [w], [output], (output, input))

    @on_cuda
    def all_gather_single_coalesced(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor],
                                    opts: Any = None) -> Work:
        where = self._where("all_gather_into_tensor_coalesced")
        self._check_open(where)
        if len(outputs) != len(inputs):
            raise ValueError(f"{where}: {len(outputs)} outputs but {len(inputs)} inputs")
        plans = [self._ag_single(where, o, i) for o, i in zip(outputs, inputs)]
        cores = [self._comm.all_gather(src.ptr, slots, src.count, src.code, False) for src, slots in plans]
        return self._work(where, cores, list(outputs), (list(outputs), list(inputs)))

    @on_cuda
    def gather(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor], opts: Any) -> Work:
        where = self._where("gather")
        self._check_open(where)
        inp = one(inputs, where, "input_tensors")
        root = opts.rootRank
        if self.rank() == root:
            outs = one(output_lists, where, "output_tensor_lists")
            src, ptrs = self._gather_plan(where, outs, inp, "gather_list")
        else:
            if output_lists and any(len(x) for x in output_lists):
                raise ValueError(f"{where}: gather_list must be empty on ranks other than the destination")
            src, ptrs = buffer(inp, f"{where}: input_tensor"), []
        w = self._comm.gather(src.ptr, ptrs, src.count, src.code, root, not opts.asyncOp)
        return self._work(where, [w], output_lists, (output_lists, inputs))

    @on_cuda
    def scatter(self, outputs: List[torch.Tensor], input_lists: List[List[torch.Tensor]], opts: Any) -> Work:
        where = self._where("scatter")
        self._check_open(where)
        out = one(outputs, where, "output_tensors")
        root = opts.rootRank
        dst = buffer(out, f"{where}: output_tensor")
        ptrs: List[int] = []
        if self.rank() == root:
            ins = one(input_lists, where, "input_tensor_lists")
            ptrs = [b.ptr for b in buffers(ins, "scatter_list", where, self.size(), out, "the output tensor")]
        elif input_lists and any(len(x) for x in input_lists):
            raise ValueError(f"{where}: scatter_list must be empty on ranks other than the source")
        w = self._comm.scatter(ptrs, dst.ptr, dst.count, dst.code, root, not opts.asyncOp)
        return self._work(where, [w], outputs, (outputs, input_lists))

    @on_cuda
    def broadcast(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("broadcast")
        self._check_open(where)
        opts = opts if opts is not None else dist.BroadcastOptions()
        t = one(tensors, where)
        if opts.rootTensor != 0:
            raise ValueError(f"{where}: rootTensor must be 0, got {opts.rootTensor}")
        b = buffer(t, f"{where}: tensor")
        w = self._comm.broadcast(b.ptr, b.count, b.code, opts.rootRank, not opts.asyncOp)
        return self._work(where, [w], tensors, tensors)

    # -- all-to-all -------------------------------------------------------------------------
    @on_cuda
    def alltoall(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("all_to_all")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllToAllOptions()
        n = self.size()
        for name, lst in (("input_tensor_list", inputs), ("output_tensor_list", outputs)):
            if not isinstance(lst, (list, tuple)) or len(lst) != n:
                raise ValueError(f"{where}: {name} must be a list of {n} tensors")
        ins = [buffer(t, f"{where}: input_tensor_list[{i}]") for i, t in enumerate(inputs)]
        outs = [buffer(t, f"{where}: output_tensor_list[{i}]") for i, t in enumerate(outputs)]
        for i, t in enumerate(list(inputs) + list(outputs)):
            same_dtype(where, inputs[0], t, "every tensor", "input_tensor_list[0]")
        check_disjoint(where, outs, "output_tensor_list", ins, "input_tensor_list")
        w = self._comm.all_to_all([b.ptr for b in ins], [b.count for b in ins], [b.ptr for b in outs],
                                  [b.count for b in outs], ins[0].code, not opts.asyncOp)
        return self._work(where, [w], list(outputs), (list(outputs), list(inputs)))

    @on_cuda
    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: List[int],
                          input_split_sizes: List[int], opts: Any = None) -> Work:
        where = self._where("all_to_all_single")
        self._check_open(where)
        opts = opts if opts is not None else dist.AllToAllOptions()
        n = self.size()
        src = buffer(input, f"{where}: input")
        dst = buffer(output, f"{where}: output")
        same_dtype(where, input, output, "output", "input")
        if src.overlaps(dst):
            raise ValueError(f"{where}: output and input share memory")
        scale_in = src.count // input.numel() if input.numel() else 1  # elements per element (complex, bytes)
        scale_out = dst.count // output.numel() if output.numel() else 1
        in_counts = [c * scale_in for c in split_counts(where, "input", input, input_split_sizes, n)]
        out_counts = [c * scale_out for c in split_counts(where, "output", output, output_split_sizes, n)]
        in_ptrs, out_ptrs, a, b = [], [], src.ptr, dst.ptr
        for i in range(n):
            in_ptrs.append(a)
            out_ptrs.append(b)
            a += in_counts[i] * src.itemsize
            b += out_counts[i] * dst.itemsize
        w = self._comm.all_to_all(in_ptrs, in_counts, out_ptrs, out_counts, src.code, not opts.asyncOp)
        return self._work(where, [w], [output], (output, input))

    # -- barrier ----------------------------------------------------------------------------
    def barrier(self, opts: Any = None) -> Work:
        where = self._where("barrier")
        self._check_open(where)
        blocking = not opts.asyncOp if opts is not None else False
        return self._work(where, [self._comm.barrier(blocking)], [], None)

    # -- point-to-point (never blocks: batch_isend_irecv posts ops one by one) ---------------
    @on_cuda
    def send(self, tensors: List[torch.Tensor], dstRank: int, tag: int) -> Work:
        where = self._where("send")
        self._check_open(where)
        t = one(tensors, where)
        b = buffer(t, f"{where}: tensor")
        w = self._comm.send(b.ptr, b.count, b.code, int(dstRank), int(tag))
        return self._work(where, [w], tensors, tensors, p2p=True)

    @on_cuda
    def recv(self, tensors: List[torch.Tensor], srcRank: int, tag: int) -> Work:
        where = self._where("recv")
        self._check_open(where)
        t = one(tensors, where)
        b = buffer(t, f"{where}: tensor")
        w = self._comm.recv(b.ptr, b.count, b.code, int(srcRank), int(tag))
        return self._work(where, [w], tensors, tensors, p2p=True)

    @on_cuda
    def recv_anysource(self, tensors: List[torch.Tensor], tag: int) -> Work:
        where = self._where("recv")
        self._check_open(where)
        t = one(tensors, where)
        b = buffer(t, f"{where}: tensor")
        w = self._comm.recv(b.ptr, b.count, b.code, -1, int(tag))
        return self._work(where, [w], tensors, tensors, p2p=True)

    # -- names of earlier torch releases --------------------------------------------------------
    _allgather_base = all_gather_single
    allgather_into_tensor_coalesced = all_gather_single_coalesced
    _reduce_scatter_base = reduce_scatter_single
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced
    alltoall_base = all_to_all_single

    # -- lifetime -----------------------------------------------------------------------------
    def _wait_for_pending_works(self) -> None:
        self._drain(self._timeout)

    def _drain(self, seconds: float) -> None:
        """Waits (at most `seconds`) for the ops in flight; their errors are not raised here."""
        deadline = time.monotonic() + seconds
        with self._lock:
            inflight = list(self._inflight)
        for cores, _ in inflight:
            for c in cores:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    getattr(c, "host_wait", c.wait)(left)  # host_wait: GPU work, see _cuda_ipc
                except Exception:  # noqa: BLE001 - a failed op is finished too
                    pass

    def shutdown(self) -> None:
        """Called by destroy_process_group: lets ops in flight finish (as gloo does, bounded by
        the group's timeout), then closes the connections."""
        if self._closed:
            return
        self._closed = True
        self._drain(self._timeout)
        cuda.release(self)
        self._comm.abort("the process group was shut down (destroy_process_group)")
        self._completer.stop()
        self._inflight = []

    def abort(self) -> None:
        """Fails every op in flight at once and closes the connections."""
        self._closed = True
        self._comm.abort("the process group was aborted")
        self._completer.stop()


def create(dist_opts: Any, backend_options: Any = None) -> PlexusProcessGroup:
    """The creator torch calls (extended API): builds the group from the store torch hands it."""
    return PlexusProcessGroup(
        dist_opts.store,
        dist_opts.group_rank,
        dist_opts.group_size,
        dist_opts.timeout,
        global_ranks=list(dist_opts.global_ranks_in_group or []),
        group_id=dist_opts.group_id,
        options=backend_options,
    )
