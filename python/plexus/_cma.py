"""What this host allows of cross-memory attach (process_vm_readv between the ranks of one
host, which the shm_cma all_reduce uses), as far as one process can tell without a peer: each
group probes it for real when it sets up shared memory, and all its ranks agree on the answer."""

from __future__ import annotations

import os
from typing import Tuple

CAP_SYS_PTRACE = 19


def _ptrace_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0  # no Yama: the classic rule (same user)


def _may_ptrace_anyone() -> bool:
    try:
        with open("/proc/self/status") as f:
            caps = next(line.split()[1] for line in f if line.startswith("CapEff:"))
        return bool(int(caps, 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, StopIteration, ValueError):
        return os.geteuid() == 0


def status() -> Tuple[bool, str]:
    """(likely usable, why) for ranks of this host started side by side by one launcher."""
    if os.environ.get("PLEXUS_CMA") == "0":
        return False, "off (PLEXUS_CMA=0): all_reduce stages through shared memory"
    scope, privileged = _ptrace_scope(), _may_ptrace_anyone()
    if scope >= 3:
        return False, "not usable: Yama ptrace_scope 3 forbids it; all_reduce stages through shared memory"
    if privileged:
        return True, "usable (CAP_SYS_PTRACE); each group checks at setup (PLEXUS_CMA=0 turns it off)"
    if scope == 2:
        return False, "not usable without CAP_SYS_PTRACE (Yama ptrace_scope 2); all_reduce stages instead"
    if scope == 1:
        return False, ("not usable between ranks a launcher starts side by side (Yama ptrace_scope 1 lets "
                       "a process read only its descendants); all_reduce stages instead")
    return True, "usable between processes of one user; each group checks at setup (PLEXUS_CMA=0 turns it off)"
