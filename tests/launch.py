"""Runs a function on N real processes that form a Plexus group, and collects what each returns.

    results = run_ranks(4, my_fn, arg1, arg2)   # my_fn(rank, world_size, arg1, arg2) -> value

`my_fn` must be defined at module level (processes are spawned, not forked). Each process
joins the default group through file:// (so no port can clash) before calling it, and leaves
it afterwards. `env` applies to every rank, `rank_env` (a list, one dict per rank) to one rank
each, both before plexus is imported. A rank that raises makes run_ranks raise with that rank's traceback; a rank that
hangs past `timeout` is killed and reported.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

_ctx = mp.get_context("spawn")


class RankFailure(AssertionError):
    pass


def _entry(fn, rank, world_size, init_method, env, args, results, join_group, rank_env=None):
    os.environ.update(env or {})
    os.environ.update(rank_env or {})
    # PLEXUS_HOST_ID_BY_RANK="a,a,b,b" puts ranks 0-1 and 2-3 on two pretend hosts.
    by_rank = os.environ.get("PLEXUS_HOST_ID_BY_RANK")
    if by_rank:
        os.environ["PLEXUS_HOST_ID"] = by_rank.split(",")[rank]
    try:
        import plexus

        if join_group:
            plexus.init_process_group(init_method=init_method, rank=rank, world_size=world_size)
        value = fn(rank, world_size, *args)
        results.put((rank, True, value))
        if join_group and plexus.is_initialized():
            plexus.destroy_process_group()
    except BaseException:  # noqa: BLE001 - everything is reported to the parent
        results.put((rank, False, traceback.format_exc()))


def start_ranks(world_size: int, fn: Callable, *args: Any, env: Optional[Dict[str, str]] = None,
                init_method: Optional[str] = None, join_group: bool = True,
                rank_env: Optional[List[Dict[str, str]]] = None):
    """Starts the ranks and returns (processes, result queue) without waiting."""
    if init_method is None:
        fd, path = tempfile.mkstemp(prefix="plexus-rdv-")
        os.close(fd)
        os.remove(path)
        init_method = f"file://{path}"
    results = _ctx.Queue()
    procs = [
        _ctx.Process(target=_entry, args=(fn, r, world_size, init_method, env, args, results, join_group,
                                          rank_env[r] if rank_env else None), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    return procs, results


def collect(procs, results, timeout: float, allow_failures=()) -> List[Any]:
    """Waits for every rank's result. Ranks listed in allow_failures may die without one."""
    n = len(procs)
    got: Dict[int, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=0.2)
            got[rank] = (ok, value)
        except queue.Empty:
            dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in got]
            if dead and all(r in allow_failures for r in dead) and len(got) + len(dead) >= n:
                break
            if any(not procs[r].is_alive() and r not in got and r not in allow_failures for r in range(n)):
                # Give the queue a moment: a finished rank's result may still be in flight.
                time.sleep(0.5)
                while True:
                    try:
                        rank, ok, value = results.get_nowait()
                        got[rank] = (ok, value)
                    except queue.Empty:
                        break
                missing = [r for r in range(n) if r not in got and not procs[r].is_alive() and r not in allow_failures]
                if missing:
                    _kill(procs)
                    raise RankFailure(f"ranks {missing} exited without a result (exit codes {[procs[r].exitcode for r in missing]})")
    _kill(procs)
    failures = {r: v for r, (ok, v) in got.items() if not ok}
    if failures:
        text = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
        raise RankFailure(f"{len(failures)} rank(s) failed:\n{text}")
    hung = [r for r in range(n) if r not in got and r not in allow_failures]
    if hung:
        raise RankFailure(f"ranks {hung} did not finish within {timeout} s")
    return [got[r][1] if r in got else None for r in range(n)]


def _kill(procs) -> None:
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def run_ranks(world_size: int, fn: Callable, *args: Any, timeout: float = 300, env: Optional[Dict[str, str]] = None,
              init_method: Optional[str] = None, join_group: bool = True,
              rank_env: Optional[List[Dict[str, str]]] = None) -> List[Any]:
    procs, results = start_ranks(world_size, fn, *args, env=env, init_method=init_method, join_group=join_group,
                                 rank_env=rank_env)
    return collect(procs, results, timeout)
