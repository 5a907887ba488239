"""What each collective moves, how its bandwidth is counted and what its result must be.

Sizes follow nccl-tests (doc/PERFORMANCE.md and src/*.cu there): a requested size S bytes is
``count = S // itemsize`` elements; collectives that split data between ranks (all_gather,
reduce_scatter, all_to_all) move ``count // n`` elements per rank and block, and the printed
size is the larger of the send and receive buffers. algbw = size / time, busbw = algbw * factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from . import data


@dataclass(frozen=True)
class Collective:
    name: str
    reduces: bool  # takes a reduction op
    rooted: bool  # takes a root rank
    split: bool  # count is split into n blocks of count // n
    send_blocks_all: bool  # send buffer holds n blocks (else one)
    recv_blocks_all: bool  # receive buffer holds n blocks (else one)
    factor: Callable[[int], float]  # busbw = algbw * factor(n)

    def block(self, count: int, n: int) -> int:
        """Elements per rank and call: nccl-tests' 'count' column."""
        return count // n if self.split else count

    def counts(self, count: int, n: int) -> Tuple[int, int]:
        """(send elements, receive elements) per rank."""
        b = self.block(count, n)
        return (b * n if self.send_blocks_all else b), (b * n if self.recv_blocks_all else b)

    def nbytes(self, count: int, n: int, itemsize: int) -> int:
        """The printed size: the larger buffer, in bytes."""
        return max(self.counts(count, n)) * itemsize

    def in_place_views(self, buf, rank: int, n: int, block: int):
        """(input, output) views of one buffer laid out as nccl-tests' in-place runs: the input of
        all_gather and the output of reduce_scatter are this rank's block of the buffer."""
        mine = buf[rank * block:(rank + 1) * block]
        if self.name == "all_gather":
            return mine, buf
        if self.name == "reduce_scatter":
            return buf, mine
        return buf, buf

    def expected(self, rank: int, n: int, block: int, root: int, in_place: bool) -> List[Tuple[int, int, "data.Source"]]:
        """Segments (offset in the result, length, where the values come from) that the result on
        `rank` must hold; an empty list when there is nothing to check."""
        if self.name == "all_reduce":
            return [(0, block, data.Reduced(0))]
        if self.name == "all_gather":
            return [(j * block, block, data.Input(j, 0)) for j in range(n)]
        if self.name == "reduce_scatter":
            return [(0, block, data.Reduced(rank * block))]
        if self.name == "broadcast":
            return [(0, block, data.Input(root, 0))]
        if self.name == "reduce":
            # Only the root has a result: gloo, unlike NCCL and plexus, may use the other
            # ranks' buffers as scratch space.
            return [(0, block, data.Reduced(0))] if rank == root else []
        if self.name == "all_to_all":
            return [(j * block, block, data.Input(j, rank * block)) for j in range(n)]
        raise ValueError(self.name)


def _ring(n: int) -> float:
    return (n - 1) / n


COLLECTIVES = {
    c.name: c
    for c in [
        Collective("all_reduce", True, False, False, False, False, lambda n: 2 * (n - 1) / n),
        Collective("all_gather", False, False, True, False, True, _ring),
        Collective("reduce_scatter", True, False, True, True, False, _ring),
        Collective("broadcast", False, True, False, False, False, lambda n: 1.0),
        Collective("reduce", True, True, False, False, False, lambda n: 1.0),
        Collective("all_to_all", False, False, True, True, True, _ring),
    ]
}


def get(name: str) -> Collective:
    return COLLECTIVES[name]


def busbw_factor(name: str, n: int) -> float:
    return COLLECTIVES[name].factor(n)


def bandwidths(nbytes: int, seconds: float, factor: float) -> Tuple[float, float]:
    """(algbw, busbw) in GB/s (10^9 bytes), as nccl-tests counts them."""
    if seconds <= 0:
        return 0.0, 0.0
    algbw = nbytes / 1e9 / seconds
    return algbw, algbw * factor


def describe_op(coll: Collective, op: str) -> str:
    return op if coll.reduces else "none"


def describe_root(coll: Collective, root: int) -> int:
    return root if coll.rooted else -1


def op_for(coll: Collective, op: str) -> Optional[str]:
    """The reduction op the collective runs, or None for data movement."""
    return op if coll.reduces else None
