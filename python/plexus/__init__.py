"""Plexus: collective communication for AI clusters.

The API follows torch.distributed::

    import numpy as np, plexus
    plexus.init_process_group(init_method="env://")
    x = np.ones(1024, dtype=np.float32)
    plexus.all_reduce(x)                # in place, like torch.distributed.all_reduce
"""

from . import _C, _ucx
from ._C import CollectiveTimeout, PeerError, PlexusError
from ._ops import ReduceOp
from ._work import Work
from .topology import Topology
from .distributed import (
    GroupMember,
    ProcessGroup,
    abort,
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    all_to_all,
    all_to_all_single,
    barrier,
    broadcast,
    debug_dump,
    deregister,
    destroy_process_group,
    explain,
    gather,
    get_backend,
    get_rank,
    get_topology,
    get_world_size,
    init_process_group,
    irecv,
    is_available,
    is_initialized,
    isend,
    new_group,
    recv,
    reduce,
    reduce_scatter,
    reduce_scatter_tensor,
    register,
    scatter,
    send,
)

__version__ = getattr(_C, "__version__", "0+unknown")
_C.ucx_set_wheel_library(_ucx.wheel_library() or "")  # the ucx transport's last resort


def algorithms(collective: str) -> list:
    """Names of the algorithms registered for `collective` (e.g. "all_reduce")."""
    return list(_C.algorithms(collective))


__all__ = [
    "CollectiveTimeout",
    "GroupMember",
    "PeerError",
    "PlexusError",
    "ProcessGroup",
    "ReduceOp",
    "Topology",
    "Work",
    "abort",
    "algorithms",
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "debug_dump",
    "deregister",
    "destroy_process_group",
    "explain",
    "gather",
    "get_backend",
    "get_rank",
    "get_topology",
    "get_world_size",
    "init_process_group",
    "irecv",
    "is_available",
    "is_initialized",
    "isend",
    "new_group",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "register",
    "scatter",
    "send",
]


def _register_torch_backend() -> None:
    # When torch is already imported, make dist.init_process_group("plexus") work. Never imports
    # torch itself (plexus does not depend on it) and never raises.
    import sys

    if "torch" not in sys.modules:
        return
    try:
        from .torch_backend import _autoload

        _autoload()
    except Exception:  # noqa: BLE001
        pass


_register_torch_backend()
