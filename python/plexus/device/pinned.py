"""A small cache of host staging buffers (pinned when the array library can pin).

Allocating pinned memory costs far more than a collective on small arrays, so blocks are reused.
A block handed back with an event (the last copy that reads it, enqueued on a stream) is only
reused once that event is done, so the host never overwrites bytes a pending copy still reads.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, List, Optional, Tuple

_GRAIN = 1 << 16  # sizes round up to 64 KiB, so near sizes share blocks


class Block:
    """`host`: a numpy uint8 array of `size` bytes; `keep`: what owns the memory (a pinned torch
    tensor or cupy PinnedMemoryPointer); `kind`: which library allocated it."""

    __slots__ = ("kind", "size", "host", "keep", "event")

    def __init__(self, kind: str, size: int, host: Any, keep: Any):
        self.kind, self.size, self.host, self.keep = kind, size, host, keep
        self.event: Any = None  # done() -> bool, or None


def _default_limit() -> int:
    return int(float(os.environ.get("PLEXUS_PINNED_CACHE_MB", "1024")) * (1 << 20))


class PinnedPool:
    """acquire(kind, nbytes, alloc) -> Block; release(block, event) when its user is done."""

    def __init__(self, limit_bytes: Optional[int] = None):
        self.limit = _default_limit() if limit_bytes is None else limit_bytes
        self._free: List[Block] = []  # oldest first
        self._lock = threading.Lock()

    def acquire(self, kind: str, nbytes: int, alloc: Callable[[int], Tuple[Any, Any]]) -> Block:
        size = max(_GRAIN, -(-nbytes // _GRAIN) * _GRAIN)
        with self._lock:
            best = None
            for b in self._free:
                # Reuse a block no more than twice as large, whose last reader is done.
                if b.kind == kind and size <= b.size <= 2 * size and (b.event is None or b.event.done()):
                    if best is None or b.size < best.size:
                        best = b
            if best is not None:
                self._free.remove(best)
                best.event = None
                return best
        host, keep = alloc(size)
        return Block(kind, size, host, keep)

    def release(self, block: Block, event: Any = None) -> None:
        block.event = event
        with self._lock:
            self._free.append(block)
            total = sum(b.size for b in self._free)
            # Over the limit: forget the oldest idle blocks. One a pending copy still reads stays
            # (cupy's pinned pool would hand its memory out again at once).
            for b in list(self._free):
                if total <= self.limit:
                    break
                if b.event is None or b.event.done():
                    self._free.remove(b)
                    total -= b.size

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(b.size for b in self._free)


POOL = PinnedPool()
