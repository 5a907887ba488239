"""The torch.distributed-shaped API of Plexus, on numpy arrays, torch tensors (CPU and CUDA) and
cupy arrays: groups, and each collective as a thin adapter over the collective layer
(plexus._collectives), which checks the call and runs it where its arrays live.

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

from . import _C, _collectives as coll, device, tuning
from ._arrays import as_buffer
from ._collectives import ProcessGroup
from ._ops import ReduceOp, op_code
from ._rendezvous import Rendezvous, mpi_rendezvous, rendezvous
from ._work import Work
from .topology import Topology, maybe_dump, topology_from_env_or

DEFAULT_TIMEOUT_S = 600.0


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
    else:
        topo = Topology.from_json(bytes(store.get("merged", timeout)).decode())
    # Rank 0 usually hosts the store: it must not return (and maybe leave) before every rank has
    # read the merged topology.
    _C.store_barrier(store, "merged-read", rank, size, timeout)
    return topo


def get_topology() -> Topology:
    """The topology of the default group, as every rank sees it."""
    _world("get_topology")
    return _state.topology


def destroy_process_group(group: Optional[ProcessGroup] = None) -> None:
    """Tears down `group`, or every group and the rendezvous when `group` is None. Ops still
    in flight fail with an error."""
    if group is None or group is _state.world:
        for g in _state.groups:
            g.close("destroy_process_group() was called")
        if _state.world is not None:
            _state.world.close("destroy_process_group() was called")
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
    group.close("destroy_process_group(group) was called")
    if group in _state.groups:
        _state.groups.remove(group)


def abort(group: Optional[ProcessGroup] = None) -> None:
    """Aborts `group`, or every group when None, as ncclCommAbort does: from any thread, every
    call blocked on it raises (a PlexusError) on this rank at once, later calls too, and the
    peers' calls with this rank fail naming it instead of waiting for their timeout. The
    groups stay until destroy_process_group(), which releases what they hold."""
    _world("abort")
    if group is GroupMember.NON_GROUP_MEMBER:
        return
    me = _state.world.ranks[_state.world.rank()]
    why = f"plexus.abort() was called on rank {me}"
    for g in ([_state.world] + list(_state.groups)) if group is None else [group]:
        g.abort(why)


def debug_dump(path: Optional[str] = None) -> str:
    """Writes this process's flight recorders (the last calls of every group: sequence number,
    signature, algorithm, state, times) as JSON to `path`, or into PLEXUS_TRACE_DIR (default
    $TMPDIR/plexus-trace) when None; returns the path. `plexus trace DIR` reads every rank's."""
    if path is None:
        written = _C._flight_dump_to_dir("plexus.debug_dump()")
        if not written:
            raise OSError("plexus.debug_dump: cannot write into PLEXUS_TRACE_DIR")
        return written
    with open(path, "w") as f:
        f.write(_C._flight_dump() + "\n")
    return path


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
    world.comm.check_not_forked()  # a forked child would rendezvous over its parent's store
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


def explain(collective: str, nbytes: int, group=None) -> "tuning.Explanation":
    """Which algorithm `group` (default: the world) runs for `collective` of `nbytes` bytes, why,
    and every algorithm's predicted time."""
    g = _group(group, "explain")
    if g is None:
        raise ValueError("explain: this rank is not a member of the group")
    chosen, why, predictions = g.comm.explain(collective, float(nbytes))
    return tuning.Explanation(collective, int(nbytes), chosen, why, list(predictions))


# --- collectives: each checks its call in the collective layer and runs it there -----------------


# The numpy API's arrays: numpy arrays, torch tensors and device arrays of plexus's dtypes.
_conv = as_buffer


def _run(g: ProcessGroup, call: "coll.Call", async_op: bool, outputs: List[Any], keep: List[Any]) -> Optional[Work]:
    core = coll.run(g, call, not async_op)
    if not async_op:
        if core is not None:  # None: it already ran, successfully, on this thread
            core.wait(None)  # raises the op's error
        return None
    g.track([core], keep)
    return Work([core], outputs, g if call.kind == "recv" else None)


def register(tensor: Any, group: Any = None) -> Any:
    """Registers a device array with every rank of the group, as NCCL's ncclCommRegister: a
    collective (every rank passes its buffer of the same size). An all_reduce of at least
    PLEXUS_DEVICE_DIRECT_MIN bytes (1 MiB) whose input and output lie in registered buffers,
    at the same offsets on every rank, then reads and writes them in place instead of staging
    them. Returns a plexus.device.native.Registration (its `zero_copy` says whether it took);
    deregister() it on every rank before freeing the buffer."""
    g = _group(group, "register")
    if g is None:
        return None
    where = g.where("register")
    buf = as_buffer(tensor, f"{where}: tensor", True)
    if buf.device is None:
        raise TypeError(f"{where}: tensor must be a device array (a cupy array or a torch CUDA tensor)")
    return device.native.register(g, buf, where)


def deregister(registration: Any) -> None:
    """Undoes register() on this rank (after the GPU has finished the calls that use it)."""
    if registration is not None:
        device.native.deregister(registration)


def all_reduce(tensor: Any, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False, *, out: Any = None):
    """Reduces `tensor` across the group; every rank gets the result in `tensor` (or in `out`,
    leaving `tensor` as it was, when `out` is given)."""
    g = _state.world if group is None else None  # (the default group without a call: hot path)
    if g is None:
        g = _group(group, "all_reduce")
        if g is None:
            return None
    # Hot path (small messages are all overhead): plain numpy arrays, blocking, checked in C++.
    if not async_op and type(op) is ReduceOp and op.factor is None:
        if g.comm.all_reduce_ndarray(tensor, out, op.code):
            return None
        # The same for device arrays, once the group runs them as native kernels.
        if "_native" in g.__dict__ and device.native.all_reduce_fast(g, tensor, op.code, out):
            device.PATHS[device.NATIVE] += 1
            return None
    where = g.where("all_reduce")
    code, factor = op_code(op, where)
    call = coll.all_reduce(g, where, _conv, tensor, out, code, factor)
    dst = tensor if out is None else out
    return _run(g, call, async_op, [dst], [tensor, out])


def all_gather(tensor_list: List[Any], tensor: Any, group: Any = None, async_op: bool = False):
    """Gathers `tensor` from every rank into `tensor_list` (one entry per rank, in rank order)."""
    g = _group(group, "all_gather")
    if g is None:
        return None
    call = coll.all_gather(g, g.where("all_gather"), _conv, tensor_list, tensor)
    return _run(g, call, async_op, list(tensor_list), [tensor, list(tensor_list)])


def all_gather_into_tensor(output_tensor: Any, input_tensor: Any, group: Any = None, async_op: bool = False):
    """Gathers every rank's `input_tensor` into `output_tensor` (world_size times larger),
    concatenated in rank order. In place when `input_tensor` is this rank's slice of the output."""
    g = _group(group, "all_gather_into_tensor")
    if g is None:
        return None
    call = coll.all_gather_into_tensor(g, g.where("all_gather_into_tensor"), _conv, output_tensor, input_tensor)
    return _run(g, call, async_op, [output_tensor], [output_tensor, input_tensor])


def reduce_scatter(output: Any, input_list: List[Any], op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces input_list[i] across ranks into `output` of rank i."""
    g = _group(group, "reduce_scatter")
    if g is None:
        return None
    where = g.where("reduce_scatter")
    code, factor = op_code(op, where)
    call = coll.reduce_scatter(g, where, _conv, output, input_list, code, factor)
    return _run(g, call, async_op, [output], [output, list(input_list)])


def reduce_scatter_tensor(output: Any, input: Any, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces `input` (world_size blocks, in rank order) across ranks; rank i gets block i in
    `output`. `output` may be this rank's block of `input`."""
    g = _group(group, "reduce_scatter_tensor")
    if g is None:
        return None
    where = g.where("reduce_scatter_tensor")
    code, factor = op_code(op, where)
    call = coll.reduce_scatter_tensor(g, where, _conv, output, input, code, factor)
    return _run(g, call, async_op, [output], [output, input])


def broadcast(tensor: Any, src: int, group: Any = None, async_op: bool = False):
    """Copies `tensor` of global rank `src` into `tensor` on every rank of the group."""
    g = _group(group, "broadcast")
    if g is None:
        return None
    where = g.where("broadcast")
    call = coll.broadcast(g, where, _conv, tensor, g.group_rank(src, where))
    return _run(g, call, async_op, [tensor], [tensor])


def reduce(tensor: Any, dst: int, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False):
    """Reduces `tensor` across the group into `tensor` of global rank `dst`; the other ranks'
    tensors are left unchanged."""
    g = _group(group, "reduce")
    if g is None:
        return None
    where = g.where("reduce")
    root = g.group_rank(dst, where)
    code, factor = op_code(op, where)
    call = coll.reduce(g, where, _conv, tensor, root, code, factor)
    return _run(g, call, async_op, [tensor], [tensor])


def barrier(group: Any = None, async_op: bool = False, device_ids: Any = None):
    """Returns once every rank of the group has entered the barrier."""
    g = _group(group, "barrier")
    if g is None:
        return None
    core = g.comm.barrier(not async_op)  # nothing to check: straight to the core
    if not async_op:
        if core is not None:
            core.wait(None)
        return None
    return Work([core], [])


def gather(tensor: Any, gather_list: Optional[List[Any]] = None, dst: int = 0, group: Any = None, async_op: bool = False):
    """Gathers `tensor` of every rank into `gather_list` (one entry per rank) on global rank
    `dst`; the other ranks pass gather_list=None."""
    g = _group(group, "gather")
    if g is None:
        return None
    where = g.where("gather")
    call = coll.gather(g, where, _conv, tensor, gather_list, g.group_rank(dst, where))
    return _run(g, call, async_op, list(gather_list or []), [tensor, gather_list])


def scatter(tensor: Any, scatter_list: Optional[List[Any]] = None, src: int = 0, group: Any = None, async_op: bool = False):
    """Global rank `src` sends scatter_list[i] to rank i of the group, into its `tensor`; the
    other ranks pass scatter_list=None."""
    g = _group(group, "scatter")
    if g is None:
        return None
    where = g.where("scatter")
    call = coll.scatter(g, where, _conv, tensor, scatter_list, g.group_rank(src, where))
    return _run(g, call, async_op, [tensor], [tensor, scatter_list])


def all_to_all(output_tensor_list: List[Any], input_tensor_list: List[Any], group: Any = None, async_op: bool = False):
    """Rank i sends input_tensor_list[j] to rank j, which receives it in output_tensor_list[i].
    Entries may differ in size, as long as each pair agrees."""
    g = _group(group, "all_to_all")
    if g is None:
        return None
    call = coll.all_to_all(g, g.where("all_to_all"), _conv, output_tensor_list, input_tensor_list)
    return _run(g, call, async_op, list(output_tensor_list), [list(output_tensor_list), list(input_tensor_list)])


def all_to_all_single(output: Any, input: Any, output_split_sizes: Optional[Sequence[int]] = None,
                      input_split_sizes: Optional[Sequence[int]] = None, group: Any = None, async_op: bool = False):
    """all_to_all on single arrays split along their first dimension: rank i sends rows
    input_split_sizes[j] to rank j (equal splits when None) and receives rows
    output_split_sizes[j] from rank j into `output`."""
    g = _group(group, "all_to_all_single")
    if g is None:
        return None
    call = coll.all_to_all_single(g, g.where("all_to_all_single"), _conv, output, input, output_split_sizes,
                                  input_split_sizes)
    return _run(g, call, async_op, [output], [output, input])


# --- point-to-point ------------------------------------------------------------------------------


def _p2p_peer(g: ProcessGroup, peer: Optional[int], where: str, what: str) -> int:
    if peer is None:
        return -1
    p = g.group_rank(int(peer), where)
    if p == g.rank():
        raise ValueError(f"{where}: {what} is this rank itself")
    return p


def isend(tensor: Any, dst: int, group: Any = None, tag: int = 0) -> Optional[Work]:
    """Sends `tensor` to global rank `dst`; returns a Work that completes once the message is
    handed to the transport. Messages between a pair of ranks with the same tag arrive in order."""
    g = _group(group, "isend")
    if g is None:
        return None
    where = g.where("isend")
    call = coll.send(g, where, _conv, tensor, _p2p_peer(g, dst, where, "dst"), int(tag))
    return _run(g, call, True, [tensor], [tensor])


def irecv(tensor: Any, src: Optional[int] = None, group: Any = None, tag: int = 0) -> Optional[Work]:
    """Receives into `tensor` from global rank `src` (any rank when None); the Work's
    `source` (after wait) tells which."""
    g = _group(group, "irecv")
    if g is None:
        return None
    where = g.where("irecv")
    call = coll.recv(g, where, _conv, tensor, _p2p_peer(g, src, where, "src"), int(tag))
    return _run(g, call, True, [tensor], [tensor])


def send(tensor: Any, dst: int, group: Any = None, tag: int = 0) -> None:
    work = isend(tensor, dst, group, tag)
    if work is not None:
        work.wait()


def recv(tensor: Any, src: Optional[int] = None, group: Any = None, tag: int = 0) -> int:
    """Blocking receive; returns the global rank the message came from (-1 for non-members)."""
    work = irecv(tensor, src, group, tag)
    if work is None:
        return -1
    work.wait()
    return work.source
