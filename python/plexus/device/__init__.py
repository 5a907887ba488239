"""Calls on device arrays (cupy arrays, torch CUDA tensors, anything with
__cuda_array_interface__), for the collective layer (plexus._collectives), which hands run() every
call whose buffers are in device memory; the numpy API and the torch backend both go through it.

Modules: arrays (what a device array is), libraries (cupy's and torch's streams, copies and pinned
memory), pinned (a pool of host staging blocks), native (kernels of the C++ core between the
ranks of one host, and their send/recv), mapped (its large all_reduces in place), direct
(messages and collectives between hosts straight through UCX), ipc (CUDA IPC with a host round
per call), pipeline (all_reduce through host memory in overlapping chunks),
staging (any call through host memory), work (the core work of a call enqueued on a stream).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Dict, Tuple

from . import direct, ipc, native, pipeline, staging

# The table of device collectives: per collective, how it runs on device arrays when every rank of
# the group can map its peers' memory (one host), and how it runs when one cannot. Collectives not
# listed are staged through host memory. Before either, groups across hosts whose every pair's UCX
# moves device memory go straight through UCX (direct.KINDS). `plexus info` prints it.
NATIVE, CUDA_IPC, PIPELINE, STAGED, UCX = "native", "cuda_ipc", "pipeline", "staged", "ucx"
COLLECTIVES: Dict[str, Tuple[str, str]] = {
    "all_reduce": (CUDA_IPC, PIPELINE),
    "all_gather": (CUDA_IPC, STAGED),
    "all_gather_into_tensor": (CUDA_IPC, STAGED),
    "reduce_scatter_tensor": (CUDA_IPC, STAGED),
    "broadcast": (CUDA_IPC, STAGED),
    "reduce": (CUDA_IPC, STAGED),
}
_STAGED_ONLY = (STAGED, STAGED)

# How device calls with a direct path ran in this process: "native", "ucx" (messages between
# hosts), "cuda_ipc", or "staged: <why>" (tests and benchmarks read it).
PATHS: "collections.Counter[str]" = collections.Counter()


def run(group: Any, call: Any, blocking: bool, run_host: Callable[[Any, Any, bool], Any]) -> Any:
    """Runs `call` (every buffer in device memory) on `group`: its core work, or None when it
    already completed. `run_host(group, call, blocking)` runs a call on host memory."""
    first, fallback = COLLECTIVES.get(call.kind, _STAGED_ONLY)
    if call.kind in native.MESSAGES:
        done = native.message(group, call, blocking)
        if not isinstance(done, ipc.Declined):
            PATHS[NATIVE] += 1
            return done
        done = direct.message(group, call, blocking)
        if not isinstance(done, ipc.Declined):
            PATHS[UCX] += 1
            return done
    elif call.kind in native.KINDS:
        done = native.run(group, call, blocking)
        if not isinstance(done, ipc.Declined):
            PATHS[NATIVE] += 1
            return done
    if call.kind in direct.KINDS:
        done = direct.collective(group, call, blocking)
        if not isinstance(done, ipc.Declined):
            PATHS[UCX] += 1
            return done
    if first == CUDA_IPC:
        done = ipc.run(group, call, blocking)
        if not isinstance(done, ipc.Declined):
            PATHS[CUDA_IPC] += 1
            return done
        PATHS[f"staged: {done.why}"] += 1
        if fallback == PIPELINE:
            return pipeline.all_reduce(group, call)
    return staging.run(call, blocking, lambda host_call, b: run_host(group, host_call, b))


def release(group: Any) -> None:
    """Closes what device calls of `group` opened (workspaces, peers' mappings, events)."""
    native.release(group)
    ipc.release(group)


def abort(group: Any) -> None:
    """Makes the group's kernels that wait for peers give up."""
    native.abort(group)


def describe_paths() -> str:
    """How device arrays travel from this process, from the table (one line, for `plexus info`)."""
    problem = ipc.local_problem()
    if problem is not None:
        return f"staged through pinned host memory (no CUDA IPC: {problem})"
    native_on = os.environ.get("PLEXUS_DEVICE_NATIVE", "1") != "0"
    by_ipc = [name for name, (path, _) in COLLECTIVES.items()
              if path == CUDA_IPC and not (native_on and name in native.KINDS)]
    chunked = [name for name, (_, fallback) in COLLECTIVES.items() if fallback == PIPELINE]
    if native_on:
        head = (f"native kernels within a host for {', '.join(native.KINDS)} (signal pads; a host round per "
                f"call only for all_reduces mapped from PLEXUS_DEVICE_MAPPED_MIN), and for send/recv on streams "
                f"of their own once the group has made a device collective (untagged messages); ")
    else:
        head = "native kernels off (PLEXUS_DEVICE_NATIVE=0); "
    ipc_part = f"CUDA IPC with a host round per call for {', '.join(by_ipc)}; " if by_ipc else ""
    return (f"{head}{ipc_part}across hosts send/recv straight through UCX where both ranks' UCX moves CUDA "
            f"memory (tags below {direct.TAG_LIMIT}), collectives too where every pair's does (reducing on the "
            f"GPU), else staged through pinned host memory ({', '.join(chunked)} in chunks that overlap the "
            f"network); the others staged")
