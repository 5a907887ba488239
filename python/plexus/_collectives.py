"""The one collective layer: the numpy API (distributed.py) and the torch backend
(torch_backend/process_group.py) are thin adapters over it.

A call goes through two steps:

1. its plan function below (all_reduce, all_gather, ...) turns the arguments into Buffers with the
   adapter's converter, checks them once (dtypes, sizes, overlaps, ops, roots: TypeError /
   ValueError naming the call, the rank and the argument, before anything is sent) and returns
   a Call: the kind, the buffers it reads and writes, the addresses and counts the core takes;
2. run() dispatches on the buffers' device: host memory goes to the C++ communicator; device
   memory to plexus.device, whose table says how each collective runs there (CUDA IPC between the
   ranks of one host, or through host memory).

run() returns the call's core work, or None when the call already finished (blocking calls may).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from . import device
from ._arrays import Buffer, check_disjoint, same_kind, split_counts
from ._ops import check_op

# conv(array, what, writable, reduce_op) -> Buffer: how an adapter turns its arguments into
# buffers (which array types and dtypes it takes).
Converter = Callable[..., Buffer]


class ProcessGroup:
    """A set of ranks that run collectives together (one C++ communicator)."""

    def __init__(self, comm: Any, ranks: List[int], name: str, label: str = ""):
        self.comm = comm
        self.ranks = ranks  # global rank of each group rank
        self.name = name
        self._label = label  # in front of every error message of the group's calls
        self._pending: List[tuple] = []  # (core works, what they use) until they complete
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

    def where(self, call: str) -> str:
        """'all_reduce on rank 3': the start of every error message of a call (cached: hot path)."""
        w = self._where.get(call)
        if w is None:
            w = self._where[call] = f"{self._label}{call} on rank {self.ranks[self.rank()]}"
        return w

    def track(self, cores: List[Any], keep: Any) -> None:
        """Keeps what ops in flight use alive (even if the caller drops their Work) until they
        complete, and lets drain() wait for them."""
        live = [c for c in cores if c is not None]
        if not live:
            return
        with self._lock:  # DDP submits from autograd threads too
            pending = self._pending
            if len(pending) >= 16:
                pending[:] = [e for e in pending if not all(c.is_completed() for c in e[0])]
            pending.append((live, keep))

    def drain(self, seconds: float) -> None:
        """Waits (at most `seconds`) for the ops in flight; their errors are not raised here."""
        deadline = time.monotonic() + seconds
        with self._lock:
            pending = list(self._pending)
        for cores, _ in pending:
            for c in cores:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    getattr(c, "host_wait", c.wait)(left)  # host_wait: GPU work (plexus.device)
                except Exception:  # noqa: BLE001 - a failed op is finished too
                    pass

    def abort(self, why: str) -> None:
        """Fails every call blocked on the group, at once, and every later one; the peers learn
        why (their calls with this rank fail naming it). Any thread may call it. What device
        calls mapped stays mapped until close(): a GPU kernel may still read it."""
        device.abort(self)
        self.comm.abort(why)

    def close(self, why: str) -> None:
        """Releases what device calls opened (first: it waits for the GPU work that still reads
        peers' memory), then fails every op in flight and closes the connections."""
        device.release(self)
        self.comm.abort(why)
        self._pending = []

    def __repr__(self) -> str:
        return f"<plexus.ProcessGroup {self.name} rank {self.rank()} of {self.size()}>"


class Call:
    """One checked call: its kind, the buffers it reads and writes, and what the core takes.
    `in_ptrs`/`out_ptrs` are addresses inside those buffers (blocks, slots); `device` is where
    the buffers live (None: host memory)."""

    __slots__ = ("kind", "where", "reads", "writes", "in_ptrs", "out_ptrs", "count", "code", "op", "factor",
                 "root", "in_counts", "out_counts", "peer", "tag", "device")

    def __init__(self, kind: str, where: str, reads: List[Buffer], writes: List[Buffer], in_ptrs: List[int],
                 out_ptrs: List[int], count: int = 0, code: int = 0, op: int = -1, factor: float = 1.0,
                 root: int = -1, in_counts: Optional[List[int]] = None, out_counts: Optional[List[int]] = None,
                 peer: int = -1, tag: int = 0):
        self.kind, self.where, self.reads, self.writes = kind, where, reads, writes
        self.in_ptrs, self.out_ptrs, self.count, self.code = in_ptrs, out_ptrs, count, code
        self.op, self.factor, self.root, self.peer, self.tag = op, factor, root, peer, tag
        self.in_counts, self.out_counts = in_counts, out_counts
        bufs = reads or writes  # all on one device: the plans check every pair (same_kind)
        self.device = bufs[0].device if bufs else None

    def with_pointers(self, translate: Callable[[int], int]) -> "Call":
        """The same call on other memory (staging): every address mapped by `translate`, no buffers."""
        return Call(self.kind, self.where, [], [], [translate(p) for p in self.in_ptrs],
                    [translate(p) for p in self.out_ptrs], self.count, self.code, self.op, self.factor, self.root,
                    self.in_counts, self.out_counts, self.peer, self.tag)


# --- running -------------------------------------------------------------------------------------

# How each kind runs in the C++ core: (communicator, call, blocking) -> core work or None.
_HOST = {
    "all_reduce": lambda m, c, b: m.all_reduce(c.in_ptrs[0], c.out_ptrs[0], c.count, c.code, c.op, c.factor, b),
    "all_gather": lambda m, c, b: m.all_gather(c.in_ptrs[0], c.out_ptrs, c.count, c.code, b),
    "reduce_scatter": lambda m, c, b: m.reduce_scatter(c.in_ptrs, c.out_ptrs[0], c.count, c.code, c.op, c.factor, b),
    "broadcast": lambda m, c, b: m.broadcast(c.out_ptrs[0], c.count, c.code, c.root, b),
    "reduce": lambda m, c, b: m.reduce(c.in_ptrs[0], c.out_ptrs[0], c.count, c.code, c.op, c.factor, c.root, b),
    "gather": lambda m, c, b: m.gather(c.in_ptrs[0], c.out_ptrs, c.count, c.code, c.root, b),
    "scatter": lambda m, c, b: m.scatter(c.in_ptrs, c.out_ptrs[0], c.count, c.code, c.root, b),
    "all_to_all": lambda m, c, b: m.all_to_all(c.in_ptrs, c.in_counts, c.out_ptrs, c.out_counts, c.code, b),
    "barrier": lambda m, c, b: m.barrier(b),
    "send": lambda m, c, b: m.send(c.in_ptrs[0], c.count, c.code, c.peer, c.tag),
    "recv": lambda m, c, b: m.recv(c.out_ptrs[0], c.count, c.code, c.peer, c.tag),
}
# The tensor forms run as the list forms do in the core (their slots are blocks of one array).
_HOST["all_gather_into_tensor"] = _HOST["all_gather"]
_HOST["reduce_scatter_tensor"] = _HOST["reduce_scatter"]
_HOST["all_to_all_single"] = _HOST["all_to_all"]


def run_host(group: ProcessGroup, call: Call, blocking: bool) -> Any:
    """Runs a call on host memory in the C++ core."""
    return _HOST[call.kind](group.comm, call, blocking)


def run(group: ProcessGroup, call: Call, blocking: bool) -> Any:
    """Runs `call` on the group: its core work, or None when it already completed. `blocking`:
    the caller waits at once (so a host op may run on this thread, and a device op need not
    give back a work)."""
    if call.device is None:
        return _HOST[call.kind](group.comm, call, blocking)  # run_host's line, one frame less: hot path
    return device.run(group, call, blocking, run_host)


# --- the plans: one per collective, every check written once -------------------------------------


def _list_of_buffers(conv: Converter, tensors: Any, argname: str, where: str, n: int, ref: Buffer, ref_name: str,
                     writable: bool, reduce_op: int = -1) -> List[Buffer]:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{where}: {argname} must be a list of {n} arrays, got {type(tensors).__name__}")
    if len(tensors) != n:
        raise ValueError(f"{where}: {argname} has {len(tensors)} entries but the group has {n} ranks")
    bufs = []
    for i, t in enumerate(tensors):
        b = conv(t, f"{where}: {argname}[{i}]", writable, reduce_op)
        same_kind(where, ref, b, f"{argname}[{i}]", ref_name)
        if b.count != ref.count:
            raise ValueError(f"{where}: {argname}[{i}] has {b.numel} elements but {ref_name} has {ref.numel}")
        bufs.append(b)
    if writable:
        order = sorted(range(n), key=lambda i: bufs[i].ptr)
        for a, b in zip(order, order[1:]):
            if bufs[a].overlaps(bufs[b]):
                raise ValueError(f"{where}: {argname}[{a}] and {argname}[{b}] share memory")
    return bufs


def _root_list(g: ProcessGroup, where: str, conv: Converter, tensors: Any, argname: str, root: int, role: str,
               ref: Buffer, ref_name: str, writable: bool) -> List[Buffer]:
    """The list of a rooted call (gather's outputs, scatter's inputs): one buffer per rank on the
    root (`role`: how the call names it), None or empty elsewhere."""
    if g.rank() != root:
        if tensors:
            raise ValueError(f"{where}: {argname} must be None or empty on ranks other than {role}")
        return []
    if tensors is None:
        raise ValueError(f"{where}: the {'destination' if role == 'dst' else 'source'} rank needs a {argname}")
    return _list_of_buffers(conv, tensors, argname, where, g.size(), ref, ref_name, writable)


def _only_own_slot_overlaps(where: str, outs: List[Buffer], argname: str, src: Buffer, own: int,
                            other: str = "the input tensor") -> None:
    """A gather's outputs (a scatter's inputs) may hold its input (output) only as entry `own`,
    exactly (in place)."""
    for i, b in enumerate(outs):
        if b.overlaps(src) and not (i == own and b.ptr == src.ptr):
            raise ValueError(f"{where}: {argname}[{i}] overlaps {other}")


def all_reduce(g: ProcessGroup, where: str, conv: Converter, tensor: Any, out: Any, op: int, factor: float,
               name: str = "tensor") -> Call:
    """`tensor` reduced into itself, or into `out` (leaving `tensor` as it was). `name`: how
    messages call `tensor` (a coalesced call names each of its tensors)."""
    buf = conv(tensor, f"{where}: {name}", out is None, op)
    dst = buf
    if out is not None:
        dst = conv(out, f"{where}: out", True, op)
        same_kind(where, buf, dst, "out", name)
        if dst.count != buf.count:
            raise ValueError(f"{where}: out has {dst.numel} elements but {name} has {buf.numel}")
        if dst.overlaps(buf) and dst.ptr != buf.ptr:
            raise ValueError(f"{where}: out partly overlaps {name}")
    check_op(where, op, buf)
    return Call("all_reduce", where, [buf], [dst], [buf.ptr], [dst.ptr], buf.count, buf.code, op, factor)


def all_gather(g: ProcessGroup, where: str, conv: Converter, tensor_list: Any, tensor: Any) -> Call:
    """Every rank's `tensor` into `tensor_list` (one entry per rank, in rank order)."""
    src = conv(tensor, f"{where}: tensor", False, -1)
    outs = _list_of_buffers(conv, tensor_list, "tensor_list", where, g.size(), src, "the tensor", True)
    _only_own_slot_overlaps(where, outs, "tensor_list", src, g.rank())
    return Call("all_gather", where, [src], outs, [src.ptr], [b.ptr for b in outs], src.count, src.code)


def all_gather_into_tensor(g: ProcessGroup, where: str, conv: Converter, output_tensor: Any,
                           input_tensor: Any) -> Call:
    """Every rank's `input_tensor`, concatenated in rank order into `output_tensor`; in place when
    the input is this rank's slice of the output."""
    src = conv(input_tensor, f"{where}: input_tensor", False, -1)
    dst = conv(output_tensor, f"{where}: output_tensor", True, -1)
    same_kind(where, src, dst, "output_tensor", "input_tensor")
    n, r = g.size(), g.rank()
    if dst.count != src.count * n:
        raise ValueError(f"{where}: output_tensor has {dst.numel} elements but must have {n} x {src.numel} "
                         "(world size x input_tensor)")
    slots = [dst.ptr + i * src.nbytes for i in range(n)]
    if src.overlaps(dst) and src.ptr != slots[r]:
        raise ValueError(f"{where}: input_tensor overlaps output_tensor but is not this rank's slice of it")
    return Call("all_gather_into_tensor", where, [src], [dst], [src.ptr], slots, src.count, src.code)


def reduce_scatter(g: ProcessGroup, where: str, conv: Converter, output: Any, input_list: Any, op: int,
                   factor: float) -> Call:
    """input_list[i] reduced across ranks into `output` of rank i."""
    dst = conv(output, f"{where}: output", True, op)
    ins = _list_of_buffers(conv, input_list, "input_list", where, g.size(), dst, "output", False, op)
    for i, b in enumerate(ins):
        if b.overlaps(dst) and not (i == g.rank() and b.ptr == dst.ptr):
            raise ValueError(f"{where}: output overlaps input_list[{i}]")
    check_op(where, op, dst)
    return Call("reduce_scatter", where, ins, [dst], [b.ptr for b in ins], [dst.ptr], dst.count, dst.code, op,
                factor)


def reduce_scatter_tensor(g: ProcessGroup, where: str, conv: Converter, output: Any, input: Any, op: int,
                          factor: float) -> Call:
    """`input` (world-size blocks in rank order) reduced across ranks; rank i gets block i in
    `output`, which may be this rank's block of `input`."""
    src = conv(input, f"{where}: input", False, op)
    dst = conv(output, f"{where}: output", True, op)
    same_kind(where, dst, src, "input", "output")
    n = g.size()
    if src.count != dst.count * n:
        raise ValueError(f"{where}: input has {src.numel} elements but must have {n} x {dst.numel} "
                         "(world size x output)")
    blocks = [src.ptr + i * dst.nbytes for i in range(n)]
    if dst.overlaps(src) and dst.ptr != blocks[g.rank()]:
        raise ValueError(f"{where}: output overlaps input but is not this rank's block of it")
    check_op(where, op, dst)
    return Call("reduce_scatter_tensor", where, [src], [dst], blocks, [dst.ptr], dst.count, dst.code, op, factor)


def broadcast(g: ProcessGroup, where: str, conv: Converter, tensor: Any, root: int) -> Call:
    """`tensor` of group rank `root` into `tensor` of every rank."""
    buf = conv(tensor, f"{where}: tensor", g.rank() != root, -1)
    return Call("broadcast", where, [buf], [buf], [buf.ptr], [buf.ptr], buf.count, buf.code, -1, 1.0, root)


def reduce(g: ProcessGroup, where: str, conv: Converter, tensor: Any, root: int, op: int, factor: float) -> Call:
    """`tensor` reduced across the group into `tensor` of group rank `root`; the other ranks'
    tensors stay as they were."""
    buf = conv(tensor, f"{where}: tensor", g.rank() == root, op)
    check_op(where, op, buf)
    return Call("reduce", where, [buf], [buf], [buf.ptr], [buf.ptr], buf.count, buf.code, op, factor, root)


def gather(g: ProcessGroup, where: str, conv: Converter, tensor: Any, gather_list: Any, root: int) -> Call:
    """Every rank's `tensor` into `gather_list` (one entry per rank) of group rank `root`; the
    other ranks pass None or an empty list."""
    src = conv(tensor, f"{where}: tensor", False, -1)
    outs = _root_list(g, where, conv, gather_list, "gather_list", root, "dst", src, "the tensor", True)
    _only_own_slot_overlaps(where, outs, "gather_list", src, root)
    return Call("gather", where, [src], outs, [src.ptr], [b.ptr for b in outs], src.count, src.code, -1, 1.0, root)


def scatter(g: ProcessGroup, where: str, conv: Converter, tensor: Any, scatter_list: Any, root: int) -> Call:
    """scatter_list[i] of group rank `root` into `tensor` of rank i; the other ranks pass None or
    an empty list."""
    dst = conv(tensor, f"{where}: tensor", True, -1)
    ins = _root_list(g, where, conv, scatter_list, "scatter_list", root, "src", dst, "tensor", False)
    _only_own_slot_overlaps(where, ins, "scatter_list", dst, root, "the output tensor")
    return Call("scatter", where, ins, [dst], [b.ptr for b in ins], [dst.ptr], dst.count, dst.code, -1, 1.0, root)


def all_to_all(g: ProcessGroup, where: str, conv: Converter, output_tensor_list: Any, input_tensor_list: Any) -> Call:
    """input_tensor_list[j] of rank i into output_tensor_list[i] of rank j; entries may differ in
    size, as long as each pair agrees."""
    n = g.size()
    for name, lst in (("input_tensor_list", input_tensor_list), ("output_tensor_list", output_tensor_list)):
        if not isinstance(lst, (list, tuple)) or len(lst) != n:
            raise ValueError(f"{where}: {name} must be a list of {n} arrays")
    ins = [conv(t, f"{where}: input_tensor_list[{i}]", False, -1) for i, t in enumerate(input_tensor_list)]
    outs = [conv(t, f"{where}: output_tensor_list[{i}]", True, -1) for i, t in enumerate(output_tensor_list)]
    for b in ins + outs:
        same_kind(where, ins[0], b, "every entry", "input_tensor_list[0]")
    check_disjoint(where, outs, "output_tensor_list", ins, "input_tensor_list")
    return Call("all_to_all", where, ins, outs, [b.ptr for b in ins], [b.ptr for b in outs], 0, ins[0].code,
                in_counts=[b.count for b in ins], out_counts=[b.count for b in outs])


def all_to_all_single(g: ProcessGroup, where: str, conv: Converter, output: Any, input: Any,
                      output_split_sizes: Optional[Sequence[int]], input_split_sizes: Optional[Sequence[int]]) -> Call:
    """all_to_all on single arrays split along their first dimension (equal splits when None)."""
    n = g.size()
    src = conv(input, f"{where}: input", False, -1)
    dst = conv(output, f"{where}: output", True, -1)
    same_kind(where, src, dst, "output", "input")
    if src.overlaps(dst):
        raise ValueError(f"{where}: output and input share memory")
    in_counts = _core_counts(src, split_counts(where, "input", src.shape, input_split_sizes, n))
    out_counts = _core_counts(dst, split_counts(where, "output", dst.shape, output_split_sizes, n))
    return Call("all_to_all_single", where, [src], [dst], _offsets(src, in_counts), _offsets(dst, out_counts), 0,
                src.code, in_counts=in_counts, out_counts=out_counts)


def _core_counts(b: Buffer, counts: List[int]) -> List[int]:
    """Element counts of the array as the core's element counts (a complex element is two)."""
    scale = b.count // b.numel if b.numel else 1
    return counts if scale == 1 else [c * scale for c in counts]


def _offsets(b: Buffer, counts: List[int]) -> List[int]:
    ptrs, p = [], b.ptr
    for c in counts:
        ptrs.append(p)
        p += c * b.itemsize
    return ptrs


def barrier(g: ProcessGroup, where: str) -> Call:
    return Call("barrier", where, [], [], [], [])


def send(g: ProcessGroup, where: str, conv: Converter, tensor: Any, peer: int, tag: int) -> Call:
    """`tensor` to group rank `peer`."""
    buf = conv(tensor, f"{where}: tensor", False, -1)
    return Call("send", where, [buf], [], [buf.ptr], [], buf.count, buf.code, peer=peer, tag=tag)


def recv(g: ProcessGroup, where: str, conv: Converter, tensor: Any, peer: int, tag: int) -> Call:
    """Into `tensor` from group rank `peer` (-1: any rank)."""
    buf = conv(tensor, f"{where}: tensor", True, -1)
    return Call("recv", where, [], [buf], [], [buf.ptr], buf.count, buf.code, peer=peer, tag=tag)
