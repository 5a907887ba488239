"""The torch.distributed-shaped API of Plexus, on numpy arrays and CPU torch tensors.

Names and semantics follow torch.distributed: collectives work in place on their arguments,
take ``group=`` and ``async_op=``, use global ranks for ``src``/``dst``, and return a Work when
``async_op=True`` (None otherwise).
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from typing import Any, List, Optional, Sequence

from . import _C, _cuda_ipc, _device_pipeline
from ._arrays import Buffer, as_buffer, check_disjoint, same_kind, split_counts
from ._device import ROUTES, route, routed
from ._ops import ReduceOp, resolve_op
from ._rendezvous import Rendezvous, mpi_rendezvous, rendezvous
from ._work import Work
from . import tuning
from .topology import Topology, maybe_dump, topology_from_env_or

DEFAULT_TIMEOUT_S = 600.0


class ProcessGroup:
    """A set of ranks that run collectives together (one C++ communicator)."""

    def __init__(self, comm: "_C.Communicator", ranks: List[int], name: str):
        self.comm = comm
        self.ranks = ranks  # global rank of each group rank
        self.name = name
        self._pending: List[tuple] = []  # (core work, arrays it uses) until it completes
        self._lock = threading.Lock()
        self._where: dict = {}

    def rank(self) -> int:
        return self.comm.rank

    def size(self) -> int:
        return self.comm.size

    def group_rank(self, global_rank: int, what: str) -> int:
        try:
            return self.ranks.index(global_rank)
        except ValueError:
            raise ValueError(f"{what}: rank {global_rank} is not a member of group {self.name} (ranks {self.ranks})") from None

    def track(self, core_work: Any, arrays: List[Any]) -> None:
        # The arrays must outlive the op even if the caller drops its Work.
        with self._lock:
            self._pending = [(w, a) for (w, a) in self._pending if not w.is_completed()]
            self._pending.append((core_work, arrays))

    def __repr__(self) -> str:
        return f"<plexus.ProcessGroup {self.name} rank {self.rank()} of {self.size()}>"


class _NonGroupMember:
    def __repr__(self) -> str:
        return "GroupMember.NON_GROUP_MEMBER"


class GroupMember:
    WORLD: Optional[ProcessGroup] = None
    NON_GROUP_MEMBER = _NonGroupMember()


class _State:
    def __init__(self) -> None:
        self.world: Optional[ProcessGroup] = None
        self.rendezvous: Optional[Rendezvous] = None
        self.timeout = DEFAULT_TIMEOUT_S
        self.groups: List[ProcessGroup] = []
        self.group_counter = 0
        self.topology: Optional[Topology] = None


_state = _State()


def _timeout_seconds(timeout: Any) -> float:
    if timeout is None:
        value = os.environ.get("PLEXUS_TIMEOUT")
        if not value:
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(value)
        except ValueError:
            raise ValueError(f"PLEXUS_TIMEOUT={value!r} is not a number of seconds") from None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    return timeout


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return _state.world is not None


def init_process_group(
    backend: Optional[str] = None,
    init_method: Optional[str] = None,
    timeout: Any = None,
    world_size: int = -1,
    rank: int = -1,
    store: Optional[Any] = None,
    group_name: str = "",
    mpi_comm: Optional[Any] = None,
) -> None:
    """Joins the default group. ``init_method`` is env:// (MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE; the default; under torchrun it joins torchrun's own store), tcp://host:port or
    file:///path; or pass a ``store`` (a plexus or torch.distributed store) with ``rank`` and
    ``world_size``; or ``mpi_comm``, an mpi4py communicator whose ranks form the group (no
    address needed). ``timeout`` (seconds or timedelta; default PLEXUS_TIMEOUT or
    600 s) bounds every wait of every collective of the group."""
    if _state.world is not None:
        raise RuntimeError("plexus: the default process group is already initialized; call destroy_process_group() first")
    if backend not in (None, "plexus", "cpu:plexus"):
        raise ValueError(f"plexus.init_process_group: backend {backend!r} is not plexus")
    seconds = _timeout_seconds(timeout)
    if sum(x is not None for x in (init_method, store, mpi_comm)) > 1:
        raise ValueError("pass only one of init_method, store and mpi_comm")
    if mpi_comm is not None:
        rdv = mpi_rendezvous(mpi_comm, seconds)
    elif store is not None:
        if rank < 0 or world_size < 1:
            raise ValueError("init_process_group(store=...) also needs rank and world_size")
        if not isinstance(store, _C.Store):
            from ._stores import TorchStore, generation_prefix

            store = generation_prefix(TorchStore(store), rank, "store")
        rdv = Rendezvous(store, rank, world_size)
    else:
        rdv = rendezvous(init_method, rank, world_size, seconds)
    _C.set_log_rank(rdv.rank)
    comm = _C.Communicator(_C.PrefixStore(rdv.store, "plexus/world/"), rdv.rank, rdv.world_size, seconds)
    _state.topology = _gather_topology(_C.PrefixStore(rdv.store, "plexus/topology/"), rdv.rank, rdv.world_size, seconds)
    comm.set_cost_model(tuning.cost_model_of(_state.topology))
    _state.rendezvous = rdv
    _state.timeout = seconds
    _state.world = ProcessGroup(comm, list(range(rdv.world_size)), group_name or "world")
    GroupMember.WORLD = _state.world


def _gather_topology(store: "_C.Store", rank: int, size: int, timeout: float) -> Topology:
    """Every rank's host, merged by rank 0 and handed back, so that all ranks (and so all
    tuners) see the same Topology. PLEXUS_TOPO_FILE replaces it with a described machine;
    PLEXUS_TOPO_DUMP_FILE writes it (rank 0)."""
    store.set(f"host/{rank}", json.dumps(_C.detect_host_topology()).encode())
    if rank == 0:
        hosts = [json.loads(bytes(store.get(f"host/{r}", timeout))) for r in range(size)]
        topo = topology_from_env_or(Topology.from_hosts(hosts))
        if topo.world_size != size:
            raise ValueError(f"PLEXUS_TOPO_FILE describes {topo.world_size} ranks but the group has {size}")
        maybe_dump(topo)
        store.set("merged", topo.to_json().encode())
        return topo
    return Topology.from_json(bytes(store.get("merged", timeout)).decode())


def get_topology() -> Topology:
    """The topology of the default group, as every rank sees it."""
    _world("get_topology")
    return _state.topology


def destroy_process_group(group: Optional[ProcessGroup] = None) -> None:
    """Tears down `group`, or every group and the rendezvous when `group` is None. Ops still
    in flight fail with an error."""
    if group is None or group is _state.world:
        for g in _state.groups:
            _cuda_ipc.release(g)  # first: it waits for the GPU work that still reads peers' memory
            g.comm.abort("destroy_process_group() was called")
        if _state.world is not None:
            _cuda_ipc.release(_state.world)
            _state.world.comm.abort("destroy_process_group() was called")
        rdv = _state.rendezvous
        if rdv is not None and rdv.file_path:
            try:
                os.remove(rdv.file_path)
            except OSError:
                pass
        _state.__init__()
        GroupMember.WORLD = None
        return
    if group is GroupMember.NON_GROUP_MEMBER:
        return
    _cuda_ipc.release(group)
    group.comm.abort("destroy_process_group(group) was called")
    if group in _state.groups:
        _state.groups.remove(group)


def _world(what: str) -> ProcessGroup:
    if _state.world is None:
        raise RuntimeError(f"{what}: the default process group is not initialized; call plexus.init_process_group() first")
    return _state.world


def _group(group: Any, what: str) -> Optional[ProcessGroup]:
    """The group to run on, or None when this rank is not a member (the call is a no-op)."""
    world = _world(what)
    if group is None:
        return world
    if group is GroupMember.NON_GROUP_MEMBER:
        return None
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"{what}: group must be a plexus ProcessGroup, got {type(group).__name__}")
    return group


def get_rank(group: Any = None) -> int:
    g = _group(group, "get_rank")
    return -1 if g is None else g.rank()


def get_world_size(group: Any = None) -> int:
    g = _group(group, "get_world_size")
    return -1 if g is None else g.size()


def get_backend(group: Any = None) -> str:
    _group(group, "get_backend")
    return "plexus"


def new_group(ranks: Optional[Sequence[int]] = None, timeout: Any = None, backend: Optional[str] = None, **_: Any):
    """Creates a group of the given global ranks. Every rank of the world must call it, in the
    same order as the other new_group calls; ranks outside the group get
    GroupMember.NON_GROUP_MEMBER."""
    world = _world("new_group")
    n = world.size()
    members = list(range(n)) if ranks is None else sorted(int(r) for r in ranks)
    if len(set(members)) != len(members):
        raise ValueError(f"new_group: duplicate ranks in {list(ranks)}")
    for r in members:
        if not 0 <= r < n:
            raise ValueError(f"new_group: rank {r} is out of range for world size {n}")
    if not members:
        raise ValueError("new_group: ranks must not be empty")
    _state.group_counter += 1
    name = f"group{_state.group_counter}"
    me = world.rank()
    seconds = _timeout_seconds(timeout) if timeout is not None else _state.timeout
    store = _state.rendezvous.store
    group = GroupMember.NON_GROUP_MEMBER
    if me in members:
        comm = _C.Communicator(_C.PrefixStore(store, f"plexus/{name}/"), members.index(me), len(members), seconds, members)
        comm.set_cost_model(world.comm.cost_model)
        group = ProcessGroup(comm, members, name)
        _state.groups.append(group)
    # As torch does: every rank of the world waits until the group exists, so that rank 0 (the
    # store's host) cannot leave and take the store away while members still rendezvous.
    _C.store_barrier(store, f"plexus/{name}/created", me, n, seconds)
    return group


# --- collectives -------------------------------------------------------------------------------


def _finish(group: ProcessGroup, core_work: Any, arrays: List[Any], outputs: List[Any], async_op: bool):
    if not async_op:
        if core_work is not None:  # None: it already ran, successfully, on this thread
            core_work.wait(None)  # raises the op's error
        return None
    group.track(core_work, arrays)
    return Work(core_work, outputs)


def _where(what: str, group: ProcessGroup) -> str:
    """'all_reduce on rank 3': the start of every error message of a call (cached: hot path)."""
    where = group._where.get(what)
    if where is None:
        where = group._where[what] = f"{what} on rank {group.ranks[group.rank()]}"
    return where


def _list_of_buffers(tensors: Any, argname: str, where: str, n: int, ref: Buffer, writable: bool) -> List[Buffer]:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{where}: {argname} must be a list of {n} arrays, got {type(tensors).__name__}")
    if len(tensors) != n:
        raise ValueError(f"{where}: {argname} has {len(tensors)} entries but the group has {n} ranks")
    bufs = []
    for i, t in enumerate(tensors):
        b = as_buffer(t, f"{where}: {argname}[{i}]", writable=writable)
        same_kind(where, ref, b, f"{argname}[{i}]", "the tensor")
        if b.count != ref.count:
            raise ValueError(f"{where}: {argname}[{i}] has {b.count} elements but the tensor has {ref.count}")
        bufs.append(b)
    if writable:
        order = sorted(range(n), key=lambda i: bufs[i].ptr)
        for a, b in zip(order, order[1:]):
            if bufs[a].overlaps(bufs[b]):
                raise ValueError(f"{where}: {argname}[{a}] and {argname}[{b}] share memory")
    return bufs


def all_reduce(tensor: Any, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False, *, out: Any = None):
    """Reduces `tensor` across the group; every rank gets the result in `tensor` (or in `out`,
    leaving `tensor` as it was, when `out` is given)."""
    g = _group(group, "all_reduce")
    if g is None:
        return None
    # Hot path (small messages are all overhead): plain numpy arrays, blocking, checked in C++
    # and without the device-array wrapper.
    if not async_op and type(op) is ReduceOp and op.factor is None and \
            g.comm.all_reduce_ndarray(tensor, out, op.code):
        return None
    return _all_reduce_checked(tensor, op, group, async_op, out=out)


all_reduce.__plexus_device_routed__ = True  # through _all_reduce_checked


@route(*ROUTES["all_reduce"])
def _all_reduce_checked(tensor: Any, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False, *,
                        out: Any = None):
    g = _group(group, "all_reduce")
    where = _where("all_reduce", g)
    buf = as_buffer(tensor, f"{where}: tensor", writable=out is None)
    dst = buf
    if out is not None:
        dst = as_buffer(out, f"{where}: out", writable=True)
        same_kind(where, buf, dst, "out", "tensor")
        if dst.count != buf.count:
            raise ValueError(f"{where}: out has {dst.count} elements but tensor has {buf.count}")
        if dst.overlaps(buf) and dst.ptr != buf.ptr:
            raise ValueError(f"{where}: out partly overlaps tensor")
    code, factor = resolve_op(op, where, buf)
    if buf.device is not None:
        try:
            return _cuda_ipc.run(g, "all_reduce", where, buf, dst, code, factor, async_op)
        except _cuda_ipc.UseStaging as e:  # through host memory, copies overlapping the network
            core = _device_pipeline.all_reduce(g, where, buf, dst, code, factor, str(e))
            return Work(core, [dst.obj]) if async_op else None
    w = g.comm.all_reduce(buf.ptr, dst.ptr, buf.count, buf.code, code, factor, not async_op)
    return _finish(g, w, [tensor, out], [dst.obj], async_op)


@routed
def all_gather(tensor_list: List[Any], tensor: Any, group: Any = None, async_op: bool = False):
    """Gathers `tensor` from every rank into `tensor_list` (one entry per rank, in rank order)."""
    g = _group(group, "all_gather")
    if g is None:
        return None
    where = _where("all_gather", g)
    src = as_buffer(tensor, f"{where}: tensor", writable=False)
    outs = _list_of_buffers(tensor_list, "tensor_list", where, g.size(), src, writable=True)
    for i, b in enumerate(outs):
        if b.overlaps(src) and not (i == g.rank() and b.ptr == src.ptr):
            raise ValueError(f"{where}: tensor_list[{i}] overlaps the input tensor")
    if src.device is not None:
        return _cuda_ipc.run(g, "all_gather", where, src, src, async_op=async_op, outs=[b.ptr for b in outs],
                             result=list(tensor_list))
    w = g.comm.all_gather(src.ptr, [b.ptr for b in outs], src.count, src.code, not async_op)
    return _finish(g, w, [tensor, list(tensor_list)], list(tensor_list), async_op)


@routed
def all_gather_into_tensor(output_tensor: Any, input_tensor: Any, group: Any = None, async_op: bool = False):
    """Gathers every rank's `input_tensor` into `output_tensor` (world_size times larger),
    concatenated in rank order. In place when `input_tensor` is this rank's slice of the output."""
    g = _group(group, "all_gather_into_tensor")
    if g is None:
        return None
    where = _where("all_gather_into_tensor", g)
    src = as_buffer(input_tensor, f"{where}: input_tensor", writable=False)
    dst = as_buffer(output_tensor, f"{where}: output_tensor", writable=True)
    same_kind(where, src, dst, "output_tensor", "input_tensor")
    n, r = g.size(), g.rank()
    if dst.count != src.count * n:
        raise ValueError(f"{where}: output_tensor has {dst.count} elements but must have {n} x {src.count}")
    slots = [dst.ptr + i * src.nbytes for i in range(n)]
    if src.overlaps(dst) and src.ptr != slots[r]:
        raise ValueError(f"{where}: input_tensor overlaps output_tensor but is not this rank's slice of it")
    if src.device is not None:
        return _cuda_ipc.run(g, "all_gather_into_tensor", where, src, dst, async_op=async_op)
    w = g.comm.all_gather(src.ptr, slots, src.count, src.code, not async_op)
    return _finish(g, w, [output_tensor, input_tensor], [output_tensor], async_op)


@routed
def reduce_scatter(output: Any, input_list: List[Any], op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces input_list[i] across ranks into `output` of rank i."""
    g = _group(group, "reduce_scatter")
    if g is None:
        return None
    where = _where("reduce_scatter", g)
    dst = as_buffer(output, f"{where}: output", writable=True)
    ins = _list_of_buffers(input_list, "input_list", where, g.size(), dst, writable=False)
    for i, b in enumerate(ins):
        if b.overlaps(dst) and not (i == g.rank() and b.ptr == dst.ptr):
            raise ValueError(f"{where}: output overlaps input_list[{i}]")
    code, factor = resolve_op(op, where, dst)
    w = g.comm.reduce_scatter([b.ptr for b in ins], dst.ptr, dst.count, dst.code, code, factor, not async_op)
    return _finish(g, w, [output, list(input_list)], [output], async_op)


@routed
def reduce_scatter_tensor(output: Any, input: Any, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces `input` (world_size blocks, in rank order) across ranks; rank i gets block i in
    `output`. `output` may be this rank's block of `input`."""
    g = _group(group, "reduce_scatter_tensor")
    if g is None:
        return None
    where = _where("reduce_scatter_tensor", g)
    src = as_buffer(input, f"{where}: input", writable=False)
    dst = as_buffer(output, f"{where}: output", writable=True)
    same_kind(where, dst, src, "input", "output")
    n = g.size()
    if src.count != dst.count * n:
        raise ValueError(f"{where}: input has {src.count} elements but must have {n} x {dst.count}")
    blocks = [src.ptr + i * dst.nbytes for i in range(n)]
    if dst.overlaps(src) and dst.ptr != blocks[g.rank()]:
        raise ValueError(f"{where}: output overlaps input but is not this rank's block of it")
    code, factor = resolve_op(op, where, dst)
    if src.device is not None:
        return _cuda_ipc.run(g, "reduce_scatter_tensor", where, src, dst, code, factor, async_op)
    w = g.comm.reduce_scatter(blocks, dst.ptr, dst.count, dst.code, code, factor, not async_op)
    return _finish(g, w, [output, input], [output], async_op)


@routed
def broadcast(tensor: Any, src: int, group: Any = None, async_op: bool = False):
    """Copies `tensor` of global rank `src` into `tensor` on every rank of the group."""
    g = _group(group, "broadcast")
    if g is None:
        return None
    where = _where("broadcast", g)
    root = g.group_rank(src, where)
    buf = as_buffer(tensor, f"{where}: tensor", writable=g.rank() != root)
    if buf.device is not None:
        return _cuda_ipc.run(g, "broadcast", where, buf, buf, async_op=async_op, root=root)
    w = g.comm.broadcast(buf.ptr, buf.count, buf.code, root, not async_op)
    return _finish(g, w, [tensor], [tensor], async_op)


@routed
def reduce(tensor: Any, dst: int, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces `tensor` across the group into `tensor` of global rank `dst`; the other ranks'
    tensors are left unchanged."""
    g = _group(group, "reduce")
    if g is None:
        return None
    where = _where("reduce", g)
    root = g.group_rank(dst, where)
    buf = as_buffer(tensor, f"{where}: tensor", writable=g.rank() == root)
    code, factor = resolve_op(op, where, buf)
    if buf.device is not None:
        return _cuda_ipc.run(g, "reduce", where, buf, buf, code, factor, async_op, root=root)
    w = g.comm.reduce(buf.ptr, buf.ptr, buf.count, buf.code, code, factor, root, not async_op)
    return _finish(g, w, [tensor], [tensor], async_op)


def barrier(group: Any = None, async_op: bool = False, device_ids: Any = None):
    """Returns once every rank of the group has entered the barrier."""
    g = _group(group, "barrier")
    if g is None:
        return None
    return _finish(g, g.comm.barrier(not async_op), [], [], async_op)


@routed
def gather(tensor: Any, gather_list: Optional[List[Any]] = None, dst: int = 0, group: Any = None, async_op: bool = False):
    """Gathers `tensor` of every rank into `gather_list` (one entry per rank) on global rank
    `dst`; the other ranks pass gather_list=None."""
    g = _group(group, "gather")
    if g is None:
        return None
    where = _where("gather", g)
    root = g.group_rank(dst, where)
    src = as_buffer(tensor, f"{where}: tensor", writable=False)
    outs: List[Buffer] = []
    if g.rank() == root:
        if gather_list is None:
            raise ValueError(f"{where}: the destination rank needs a gather_list")
        outs = _list_of_buffers(gather_list, "gather_list", where, g.size(), src, writable=True)
    elif gather_list:
        raise ValueError(f"{where}: gather_list must be None or empty on ranks other than dst")
    w = g.comm.gather(src.ptr, [b.ptr for b in outs], src.count, src.code, root, not async_op)
    return _finish(g, w, [tensor, gather_list], list(gather_list or []), async_op)


@routed
def scatter(tensor: Any, scatter_list: Optional[List[Any]] = None, src: int = 0, group: Any = None, async_op: bool = False):
    """Global rank `src` sends scatter_list[i] to rank i of the group, into its `tensor`; the
    other ranks pass scatter_list=None."""
    g = _group(group, "scatter")
    if g is None:
        return None
    where = _where("scatter", g)
    root = g.group_rank(src, where)
    dst = as_buffer(tensor, f"{where}: tensor", writable=True)
    ins: List[Buffer] = []
    if g.rank() == root:
        if scatter_list is None:
            raise ValueError(f"{where}: the source rank needs a scatter_list")
        ins = _list_of_buffers(scatter_list, "scatter_list", where, g.size(), dst, writable=False)
    elif scatter_list:
        raise ValueError(f"{where}: scatter_list must be None or empty on ranks other than src")
    w = g.comm.scatter([b.ptr for b in ins], dst.ptr, dst.count, dst.code, root, not async_op)
    return _finish(g, w, [tensor, scatter_list], [tensor], async_op)


@routed
def all_to_all(output_tensor_list: List[Any], input_tensor_list: List[Any], group: Any = None, async_op: bool = False):
    """Rank i sends input_tensor_list[j] to rank j, which receives it in output_tensor_list[i].
    Entries may differ in size, as long as each pair agrees."""
    g = _group(group, "all_to_all")
    if g is None:
        return None
    where = _where("all_to_all", g)
    n = g.size()
    for name, lst in (("input_tensor_list", input_tensor_list), ("output_tensor_list", output_tensor_list)):
        if not isinstance(lst, (list, tuple)) or len(lst) != n:
            raise ValueError(f"{where}: {name} must be a list of {n} arrays")
    ins = [as_buffer(t, f"{where}: input_tensor_list[{i}]", writable=False) for i, t in enumerate(input_tensor_list)]
    outs = [as_buffer(t, f"{where}: output_tensor_list[{i}]", writable=True) for i, t in enumerate(output_tensor_list)]
    for i, b in enumerate(ins + outs):
        same_kind(where, ins[0], b, "every entry", "input_tensor_list[0]")
    check_disjoint(where, outs, "output_tensor_list", ins, "input_tensor_list")
    w = g.comm.all_to_all([b.ptr for b in ins], [b.count for b in ins], [b.ptr for b in outs], [b.count for b in outs],
                          ins[0].code, not async_op)
    return _finish(g, w, [list(output_tensor_list), list(input_tensor_list)], list(output_tensor_list), async_op)


@routed
def all_to_all_single(output: Any, input: Any, output_split_sizes: Optional[Sequence[int]] = None,
                      input_split_sizes: Optional[Sequence[int]] = None, group: Any = None, async_op: bool = False):
    """all_to_all on single arrays split along their first dimension: rank i sends rows
    input_split_sizes[j] to rank j (equal splits when None) and receives rows
    output_split_sizes[j] from rank j into `output`."""
    g = _group(group, "all_to_all_single")
    if g is None:
        return None
    where = _where("all_to_all_single", g)
    n = g.size()
    src = as_buffer(input, f"{where}: input", writable=False)
    dst = as_buffer(output, f"{where}: output", writable=True)
    same_kind(where, src, dst, "output", "input")
    if src.overlaps(dst):
        raise ValueError(f"{where}: output and input share memory")
    in_counts = split_counts(where, "input", tuple(input.shape), input_split_sizes, n)
    out_counts = split_counts(where, "output", tuple(output.shape), output_split_sizes, n)
    in_ptrs = [src.ptr + sum(in_counts[:i]) * src.itemsize for i in range(n)]
    out_ptrs = [dst.ptr + sum(out_counts[:i]) * dst.itemsize for i in range(n)]
    w = g.comm.all_to_all(in_ptrs, in_counts, out_ptrs, out_counts, src.code, not async_op)
    return _finish(g, w, [output, input], [output], async_op)


# --- point-to-point ------------------------------------------------------------------------------


def _p2p_peer(g: ProcessGroup, peer: Optional[int], where: str, what: str) -> int:
    if peer is None:
        return -1
    p = g.group_rank(int(peer), where)
    if p == g.rank():
        raise ValueError(f"{where}: {what} is this rank itself")
    return p


@routed
def isend(tensor: Any, dst: int, group: Any = None, tag: int = 0) -> Optional[Work]:
    """Sends `tensor` to global rank `dst`; returns a Work that completes once the message is
    handed to the transport. Messages between a pair of ranks with the same tag arrive in order."""
    g = _group(group, "isend")
    if g is None:
        return None
    where = _where("isend", g)
    buf = as_buffer(tensor, f"{where}: tensor", writable=False)
    w = g.comm.send(buf.ptr, buf.count, buf.code, _p2p_peer(g, dst, where, "dst"), int(tag))
    g.track(w, [tensor])
    return Work(w, [tensor])


@routed
def irecv(tensor: Any, src: Optional[int] = None, group: Any = None, tag: int = 0) -> Optional[Work]:
    """Receives into `tensor` from global rank `src` (any rank when None); the Work's
    `source` (after wait) tells which."""
    g = _group(group, "irecv")
    if g is None:
        return None
    where = _where("irecv", g)
    buf = as_buffer(tensor, f"{where}: tensor", writable=True)
    w = g.comm.recv(buf.ptr, buf.count, buf.code, _p2p_peer(g, src, where, "src"), int(tag))
    g.track(w, [tensor])
    return Work(w, [tensor], group=g)


@routed
def send(tensor: Any, dst: int, group: Any = None, tag: int = 0) -> None:
    work = isend(tensor, dst, group, tag)
    if work is not None:
        work.wait()


@routed
def recv(tensor: Any, src: Optional[int] = None, group: Any = None, tag: int = 0) -> int:
    """Blocking receive; returns the global rank the message came from (-1 for non-members)."""
    work = irecv(tensor, src, group, tag)
    if work is None:
        return -1
    work.wait()
    return work.source
