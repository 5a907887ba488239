"""Adapters that let the C++ core rendezvous through stores it does not own."""

from __future__ import annotations

import datetime
import socket
from typing import Any, Optional

from . import _C


def route_address(host: Optional[str], port: int = 1) -> str:
    """The local IP this host uses to reach `host` (no packet is sent), or '' if unknown."""
    if not host:
        return ""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError:
        return ""


class TorchStore(_C.Store):
    """A torch.distributed Store (TCPStore, FileStore, PrefixStore ...) seen by the core."""

    def __init__(self, store: Any, address_hint: str = ""):
        super().__init__()
        self._store = store
        self._address = address_hint

    def set(self, key: str, value: bytes) -> None:
        self._store.set(key, value)

    def get(self, key: str, timeout: float) -> bytes:
        try:
            self._store.wait([key], datetime.timedelta(seconds=max(timeout, 0.001)))
        except Exception as e:  # torch raises DistStoreError / RuntimeError on timeout
            if "timeout" in str(e).lower() or "timed out" in str(e).lower():
                raise TimeoutError(f"timed out waiting for key {key!r}") from e
            raise
        return bytes(self._store.get(key))

    def add(self, key: str, delta: int) -> int:
        return int(self._store.add(key, delta))

    def local_address(self) -> str:
        return self._address


def generation_prefix(store: "_C.Store", rank: int, what: str) -> "_C.PrefixStore":
    """A fresh namespace in a store that outlives one group (torch's agent store): the n-th
    group made on it uses generation n, so keys of earlier groups never collide."""
    gen = store.add(f"plexus/{what}/generation/{rank}", 1)
    return _C.PrefixStore(store, f"plexus/{what}/{gen}/")
