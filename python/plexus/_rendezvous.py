"""init_method handling: env://, tcp://host:port and file:///path.

Rank 0 hosts the key-value store (a C++ server thread); every rank connects to it as a client.
For file://, rank 0 serves on a free port and publishes its address in the file.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

from . import _C


@dataclass
class Rendezvous:
    store: "_C.Store"
    rank: int
    world_size: int
    server: Optional["_C.TcpStoreServer"] = None  # held by rank 0 for the life of the group
    file_path: Optional[str] = None  # file:// rendezvous file that rank 0 removes at the end


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        raise ValueError(f"init_method env:// needs the environment variable {name}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _rank_and_size(rank: int, world_size: int) -> tuple:
    if rank is None or rank < 0:
        rank = _env_int("RANK")
    if world_size is None or world_size < 0:
        world_size = _env_int("WORLD_SIZE")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
    return rank, world_size


def _bind_ip(host: str) -> str:
    """Where rank 0's store listens: the address that `host` (MASTER_ADDR) names here, loopback
    when it is loopback, so that the store is not open on every network the host is on. A host
    name that resolves to loopback only here (Debian's 127.0.1.1 for its own name) may be a real
    address elsewhere: every interface then, as when `host` does not resolve."""
    try:
        ip = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except (OSError, IndexError):
        return "0.0.0.0"
    literal = host == ip or host == "localhost"
    if ipaddress.ip_address(ip).is_loopback and not literal:
        return "0.0.0.0"
    return ip


def _store_server(bind_ip: str, port: int) -> "_C.TcpStoreServer":
    try:
        return _C.TcpStoreServer(bind_ip, port)
    except RuntimeError:
        if bind_ip == "0.0.0.0":
            raise
        # Not an address of this host (MASTER_ADDR behind NAT, say): every interface then.
        return _C.TcpStoreServer("0.0.0.0", port)


def _serve_and_connect(host: str, port: int, rank: int, timeout: float):
    server = None
    if rank == 0:
        server = _store_server(_bind_ip(host), port)
    # Rank 0 dials the public address too: the local end of that connection is the address the
    # core advertises to peers on other hosts.
    store = _C.TcpStoreClient(host, port, timeout)
    return server, store


def _reachable_ip() -> str:
    """An address of this host that other hosts can likely reach (no packet is sent)."""
    ifname = os.environ.get("PLEXUS_SOCKET_IFNAME")
    if ifname:
        ip = _C.interface_ipv4(ifname)
        if not ip:
            raise ValueError(f"PLEXUS_SOCKET_IFNAME={ifname} has no IPv4 address")
        return ip
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _file_rendezvous(path: str, rank: int, timeout: float):
    deadline = time.monotonic() + timeout
    if rank == 0:
        ip = _reachable_ip()
        server = _store_server(ip, 0)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{ip}:{server.port}\n")
        os.replace(tmp, path)  # atomic: readers never see half a file
        return server, _C.TcpStoreClient(ip, server.port, timeout)
    last_error = None
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                host, _, port = f.read().strip().rpartition(":")
            # A short attempt: the file may be left over from an earlier run.
            return None, _C.TcpStoreClient(host, int(port), min(2.0, max(0.1, deadline - time.monotonic())))
        except (OSError, ValueError, RuntimeError) as e:
            last_error = e
            time.sleep(0.05)
    raise TimeoutError(f"rank {rank} timed out after {timeout:.0f} s waiting for rank 0 to publish {path}: {last_error}")


def _torch_agent_store(host: str, port: int, rank: int, world_size: int, timeout: float) -> "_C.Store":
    """torchrun's agent already serves a store on MASTER_PORT: join it as a client."""
    import datetime

    import torch.distributed as dist

    from ._stores import TorchStore, generation_prefix, route_address

    tstore = dist.TCPStore(host, port, world_size, is_master=False, timeout=datetime.timedelta(seconds=timeout))
    return generation_prefix(TorchStore(tstore, route_address(host, port)), rank, "torchrun")


def mpi_rendezvous(comm, timeout: float) -> Rendezvous:
    """Rendezvous over an mpi4py communicator: rank 0 serves the store on a free port and
    broadcasts its address; no MASTER_ADDR/MASTER_PORT needed."""
    rank, size = comm.Get_rank(), comm.Get_size()
    server = None
    address = None
    if rank == 0:
        ip = _reachable_ip()
        server = _store_server(ip, 0)
        address = f"{ip}:{server.port}"
    address = comm.bcast(address, root=0)
    host, _, port = address.rpartition(":")
    return Rendezvous(_C.TcpStoreClient(host, int(port), timeout), rank, size, server)


def rendezvous(init_method: Optional[str], rank: int, world_size: int, timeout: float) -> Rendezvous:
    init_method = init_method or "env://"
    url = urlparse(init_method)
    if url.scheme == "env":
        rank, world_size = _rank_and_size(rank, world_size)
        host = os.environ.get("MASTER_ADDR")
        if not host:
            raise ValueError("init_method env:// needs the environment variable MASTER_ADDR")
        port = _env_int("MASTER_PORT")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            return Rendezvous(_torch_agent_store(host, port, rank, world_size, timeout), rank, world_size)
        server, store = _serve_and_connect(host, port, rank, timeout)
        return Rendezvous(store, rank, world_size, server)
    if url.scheme == "tcp":
        rank, world_size = _rank_and_size(rank, world_size)
        if not url.hostname or not url.port:
            raise ValueError(f"init_method {init_method!r} must look like tcp://host:port")
        server, store = _serve_and_connect(url.hostname, url.port, rank, timeout)
        return Rendezvous(store, rank, world_size, server)
    if url.scheme == "file":
        rank, world_size = _rank_and_size(rank, world_size)
        path = url.path
        if not path:
            raise ValueError(f"init_method {init_method!r} must look like file:///path/to/file")
        server, store = _file_rendezvous(path, rank, timeout)
        return Rendezvous(store, rank, world_size, server, path if rank == 0 else None)
    raise ValueError(f"unsupported init_method {init_method!r}; use env://, tcp://host:port or file:///path")
