"""PlexusProcessGroup: a torch.distributed ProcessGroup whose collectives run in plexus.

torch 2.13 cannot take a Python `Backend` (no constructor), so this subclasses
torch.distributed.ProcessGroup: the creator returns it and it *is* the group. torch's Python API
calls these methods directly; C++ callers (DDP's Reducer, functional collectives) reach them
through PyTorch's trampoline. Method names are the ones torch 2.13 calls, with the older names
as aliases. Ranks (roots, peers) are group ranks, as torch hands them.

Each method is a thin adapter over the collective layer (plexus._collectives), the one the numpy
API uses: it unpacks torch's arguments (one tensor per process, options), and the layer checks
the tensors on the calling rank before anything is sent (TypeError / ValueError) and runs the
call where they live: CPU tensors zero-copy in the core (synchronous calls, opts.asyncOp False,
on the calling thread), CUDA tensors through plexus.device (native kernels or CUDA IPC on one
host; between hosts straight through UCX where every pair's UCX moves CUDA memory, else through
pinned host memory). Errors found while running (size mismatch between ranks, a dead peer, a
timeout) surface from Work.wait() as plexus.PlexusError, a RuntimeError.
"""

from __future__ import annotations

import datetime
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

from .. import _C, _collectives as coll
from .._collectives import ProcessGroup
from .._stores import TorchStore, generation_prefix, route_address
from .._work import Work as CoreWork
from .ops import converter, one, reduce_op
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


# torch's tensors as the collective layer's buffers (any torch dtype; see ops.buffer).
_conv = converter


class PlexusProcessGroup(dist.ProcessGroup):
    """A torch process group backed by one plexus Communicator."""

    def __init__(self, store: Any, rank: int, size: int, timeout: Any = None,
                 global_ranks: Optional[Sequence[int]] = None, group_id: str = "", options: Any = None):
        dist.ProcessGroup.__init__(self, rank, size)
        self._gname = str(group_id)
        self._gdesc = ""
        self._options = options
        self._timeout = _seconds(timeout)
        global_ranks = list(global_ranks or [])
        self._closed = False
        if not global_ranks:
            _C.set_log_rank(rank)  # the default group: its ranks are the global ranks
        # torch's store is already namespaced per group; the generation keeps a re-initialized
        # group (same name, same store) from reading the keys of an earlier one.
        self._torch_store = TorchStore(store, _address_hint(store))
        core_store = generation_prefix(self._torch_store, rank, "torch")
        comm = _C.Communicator(core_store, rank, size, self._timeout, global_ranks)
        self._group = ProcessGroup(comm, global_ranks or list(range(size)), self._gname, label="plexus ")
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
        return self._group.comm

    def __repr__(self) -> str:
        return f"<PlexusProcessGroup {self._gname!r} rank {self.rank()} of {self.size()}>"

    # -- plumbing ---------------------------------------------------------------------------
    def _where(self, call: str) -> str:
        where = self._group.where(call)
        if self._closed:
            raise _C.PlexusError(f"{where}: the process group was shut down")
        return where

    def _run(self, where: str, calls: List[coll.Call], blocking: bool, result: Any, keep: Any,
             p2p: bool = False) -> Work:
        """Runs checked calls (every check passed before the first is submitted) as one Work.
        Calls on CUDA tensors do not wait for the GPU: their work is on the stream, as NCCL's, or
        (between hosts through UCX) on the group's progress thread, which waits for the stream."""
        cores: List[Any] = []
        try:
            for c in calls:
                cores.append(coll.run(self._group, c, blocking and c.device is None))
        finally:
            self._group.track(cores, keep)  # those submitted before a failure run on
        return Work(CoreWork(cores, [], what=where), result, self, p2p)

    # -- reductions -------------------------------------------------------------------------
    def allreduce(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allreduce")
        opts = opts if opts is not None else dist.AllreduceOptions()
        code, factor = reduce_op(opts.reduceOp, where)
        call = coll.all_reduce(self._group, where, _conv, one(tensors, where), None, code, factor)
        return self._run(where, [call], not opts.asyncOp, tensors, tensors)

    def allreduce_coalesced(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allreduce_coalesced")
        opts = opts if opts is not None else dist.AllreduceCoalescedOptions()
        code, factor = reduce_op(opts.reduceOp, where)
        calls = [coll.all_reduce(self._group, where, _conv, t, None, code, factor, f"tensors[{i}]")
                 for i, t in enumerate(tensors)]
        return self._run(where, calls, False, list(tensors), list(tensors))

    def reduce(self, tensors: List[torch.Tensor], opts: Any) -> Work:
        # Like plexus.reduce: only the root's tensor changes (gloo may scribble on the others'
        # tensors, whose content torch leaves unspecified).
        where = self._where("reduce")
        code, factor = reduce_op(opts.reduceOp, where)
        call = coll.reduce(self._group, where, _conv, one(tensors, where), opts.rootRank, code, factor)
        return self._run(where, [call], not opts.asyncOp, tensors, tensors)

    def reduce_scatter(self, outputs: List[torch.Tensor], input_lists: List[List[torch.Tensor]], opts: Any) -> Work:
        where = self._where("reduce_scatter")
        out = one(outputs, where, "output_tensors")
        ins = one(input_lists, where, "input_lists")
        code, factor = reduce_op(opts.reduceOp, where)
        call = coll.reduce_scatter(self._group, where, _conv, out, ins, code, factor)
        return self._run(where, [call], not opts.asyncOp, outputs, [outputs, input_lists])

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        where = self._where("reduce_scatter_tensor")
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        code, factor = reduce_op(opts.reduceOp, where)
        call = coll.reduce_scatter_tensor(self._group, where, _conv, output, input, code, factor)
        return self._run(where, [call], not opts.asyncOp, [output], (output, input))

    def reduce_scatter_single_coalesced(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor],
                                        opts: Any = None) -> Work:
        where = self._where("reduce_scatter_tensor_coalesced")
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        if len(outputs) != len(inputs):
            raise ValueError(f"{where}: {len(outputs)} outputs but {len(inputs)} inputs")
        code, factor = reduce_op(opts.reduceOp, where)
        calls = [coll.reduce_scatter_tensor(self._group, where, _conv, o, i, code, factor)
                 for o, i in zip(outputs, inputs)]
        return self._run(where, calls, False, list(outputs), (list(outputs), list(inputs)))

    # -- gathers ----------------------------------------------------------------------------
    def allgather(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("allgather")
        opts = opts if opts is not None else dist.AllgatherOptions()
        inp = one(inputs, where, "input_tensors")
        outs = one(output_lists, where, "output_tensor_lists")
        call = coll.all_gather(self._group, where, _conv, outs, inp)
        return self._run(where, [call], not opts.asyncOp, output_lists, (output_lists, inputs))

    def allgather_coalesced(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor],
                            opts: Any = None) -> Work:
        """output_lists[r][i] receives rank r's inputs[i] (torch's all_gather_coalesced)."""
        where = self._where("allgather_coalesced")
        n = self.size()
        if len(output_lists) != n:
            raise ValueError(f"{where}: output_tensor_lists has {len(output_lists)} lists but the group has {n} ranks")
        for r, lst in enumerate(output_lists):
            if len(lst) != len(inputs):
                raise ValueError(f"{where}: output_tensor_lists[{r}] has {len(lst)} tensors but input_tensor_list "
                                 f"has {len(inputs)}")
        calls = [coll.all_gather(self._group, where, _conv, [output_lists[r][i] for r in range(n)], t)
                 for i, t in enumerate(inputs)]
        return self._run(where, calls, False, output_lists, (output_lists, inputs))

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any = None) -> Work:
        where = self._where("all_gather_into_tensor")
        opts = opts if opts is not None else dist.AllgatherOptions()
        call = coll.all_gather_into_tensor(self._group, where, _conv, output, input)
        return self._run(where, [call], not opts.asyncOp, [output], (output, input))

    def all_gather_single_coalesced(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor],
                                    opts: Any = None) -> Work:
        where = self._where("all_gather_into_tensor_coalesced")
        if len(outputs) != len(inputs):
            raise ValueError(f"{where}: {len(outputs)} outputs but {len(inputs)} inputs")
        calls = [coll.all_gather_into_tensor(self._group, where, _conv, o, i) for o, i in zip(outputs, inputs)]
        return self._run(where, calls, False, list(outputs), (list(outputs), list(inputs)))

    def gather(self, output_lists: List[List[torch.Tensor]], inputs: List[torch.Tensor], opts: Any) -> Work:
        where = self._where("gather")
        inp = one(inputs, where, "input_tensors")
        root = opts.rootRank
        gather_list = one(output_lists, where, "output_tensor_lists") if self.rank() == root else \
            [t for lst in output_lists or [] for t in lst]
        call = coll.gather(self._group, where, _conv, inp, gather_list, root)
        return self._run(where, [call], not opts.asyncOp, output_lists, (output_lists, inputs))

    def scatter(self, outputs: List[torch.Tensor], input_lists: List[List[torch.Tensor]], opts: Any) -> Work:
        where = self._where("scatter")
        out = one(outputs, where, "output_tensors")
        root = opts.rootRank
        scatter_list = one(input_lists, where, "input_tensor_lists") if self.rank() == root else \
            [t for lst in input_lists or [] for t in lst]
        call = coll.scatter(self._group, where, _conv, out, scatter_list, root)
        return self._run(where, [call], not opts.asyncOp, outputs, (outputs, input_lists))

    def broadcast(self, tensors: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("broadcast")
        opts = opts if opts is not None else dist.BroadcastOptions()
        if opts.rootTensor != 0:
            raise ValueError(f"{where}: rootTensor must be 0, got {opts.rootTensor}")
        call = coll.broadcast(self._group, where, _conv, one(tensors, where), opts.rootRank)
        return self._run(where, [call], not opts.asyncOp, tensors, tensors)

    # -- all-to-all -------------------------------------------------------------------------
    def alltoall(self, outputs: List[torch.Tensor], inputs: List[torch.Tensor], opts: Any = None) -> Work:
        where = self._where("all_to_all")
        opts = opts if opts is not None else dist.AllToAllOptions()
        call = coll.all_to_all(self._group, where, _conv, outputs, inputs)
        return self._run(where, [call], not opts.asyncOp, list(outputs), (list(outputs), list(inputs)))

    def all_to_all_single(self, output: torch.Tensor, input: torch.Tensor, output_split_sizes: List[int],
                          input_split_sizes: List[int], opts: Any = None) -> Work:
        where = self._where("all_to_all_single")
        opts = opts if opts is not None else dist.AllToAllOptions()
        call = coll.all_to_all_single(self._group, where, _conv, output, input, output_split_sizes, input_split_sizes)
        return self._run(where, [call], not opts.asyncOp, [output], (output, input))

    # -- barrier ----------------------------------------------------------------------------
    def barrier(self, opts: Any = None) -> Work:
        where = self._where("barrier")
        blocking = not opts.asyncOp if opts is not None else False
        return self._run(where, [coll.barrier(self._group, where)], blocking, [], None)

    # -- point-to-point (never blocks: batch_isend_irecv posts ops one by one) ---------------
    def send(self, tensors: List[torch.Tensor], dstRank: int, tag: int) -> Work:
        where = self._where("send")
        call = coll.send(self._group, where, _conv, one(tensors, where), int(dstRank), int(tag))
        return self._run(where, [call], False, tensors, tensors, p2p=True)

    def recv(self, tensors: List[torch.Tensor], srcRank: int, tag: int) -> Work:
        where = self._where("recv")
        call = coll.recv(self._group, where, _conv, one(tensors, where), int(srcRank), int(tag))
        return self._run(where, [call], False, tensors, tensors, p2p=True)

    def recv_anysource(self, tensors: List[torch.Tensor], tag: int) -> Work:
        where = self._where("recv")
        call = coll.recv(self._group, where, _conv, one(tensors, where), -1, int(tag))
        return self._run(where, [call], False, tensors, tensors, p2p=True)

    # -- names of earlier torch releases --------------------------------------------------------
    _allgather_base = all_gather_single
    allgather_into_tensor_coalesced = all_gather_single_coalesced
    _reduce_scatter_base = reduce_scatter_single
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced
    alltoall_base = all_to_all_single

    # -- lifetime -----------------------------------------------------------------------------
    def _wait_for_pending_works(self) -> None:
        self._group.drain(self._timeout)

    def shutdown(self) -> None:
        """Called by destroy_process_group: lets ops in flight finish (as gloo does, bounded by
        the group's timeout), then closes the connections."""
        if self._closed:
            return
        self._closed = True
        self._group.drain(self._timeout)
        self._group.close("the process group was shut down (destroy_process_group)")
        self._completer.stop()

    def abort(self) -> None:
        """Fails every op in flight at once, and the peers' ops with this rank (plexus.abort)."""
        self._closed = True
        self._group.abort(f"the process group was aborted on rank {self._group.ranks[self.rank()]}")
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
