"""The Work that the plexus process group returns, and the thread that completes its futures.

A Work wraps the plexus Work of a call (a coalesced call submits one core work per tensor).
wait() blocks in the core with the GIL released and raises the op's error (PlexusError, a
RuntimeError, as torch's users expect). get_future() gives a torch.futures.Future completed when the op is:
futures are completed by ONE thread per process group (the Completer), made lazily, so that a
plain synchronous call costs no thread hand-off at all.

Trap (see the research note): torch.futures.Future.set_exception() is a Python-only emulation
that C++ consumers (DDP's Reducer) read as a successful future holding a Python object, and
crash. Errors are therefore raised inside a .then() callback, which marks the child future
failed at the C++ level.
"""

from __future__ import annotations

import collections
import datetime
import queue
import threading
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from .. import _C


def _unwrap(fut: "torch.futures.Future") -> Any:
    value = fut.value()
    if isinstance(value, BaseException):
        raise value
    return value


def _seconds(timeout: Any) -> Optional[float]:
    """None (no limit) for None, a zero/negative timedelta (torch's kNoTimeout) or <= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    return timeout if timeout > 0 else None


class Work(dist.Work):
    """Handle of a plexus call, as torch.distributed's Work behaves (wait raises on failure): a
    dist.Work over the plexus Work that the collective layer's core works make."""

    def __init__(self, work: Any, result: Any, pg: Any, p2p: bool = False):
        super().__init__()
        self._work = work  # plexus._work.Work
        self._result = result  # what the future resolves to (a list of tensors, or of lists)
        self._pg = pg
        self._p2p = p2p
        self._fut = None
        self._lock = threading.Lock()

    # -- state -----------------------------------------------------------------------------
    def is_completed(self) -> bool:
        return self._work.is_completed()

    def is_success(self) -> bool:
        return self._work.is_success()

    def exception(self) -> Optional[BaseException]:
        return self._work.exception() if self._work.is_completed() else None

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, timeout: Any = None) -> bool:
        """Blocks until the op is done; raises its error. With a timeout (timedelta or seconds)
        raises plexus.CollectiveTimeout if it is still running then (the op goes on)."""
        seconds = _seconds(timeout)
        try:
            return self._work.wait(seconds)  # GIL released; raises the op's error
        except TimeoutError:
            raise _C.CollectiveTimeout(f"{self._work.what} did not complete within {seconds} s "
                                       "(Work.wait timeout)") from None

    def synchronize(self) -> None:
        """Blocks the host until the op is done, GPU work included (NCCL's rule); raises its error."""
        self._work.synchronize()

    def result(self) -> List[torch.Tensor]:
        self.wait()
        r = self._result
        if r and isinstance(r[0], list):
            return [t for sub in r for t in sub]
        return list(r)

    def get_future(self) -> "torch.futures.Future":
        with self._lock:
            if self._fut is None:
                raw = torch.futures.Future()
                self._fut = raw.then(_unwrap)
                completer = self._pg._completer
                if not self.is_completed() and completer.is_current_thread():
                    # Asked from a future's callback, which runs on the completer thread (e.g.
                    # DDP's PowerSGD hook chains all_reduce(...).get_future().wait()): that
                    # thread cannot also complete this future, so wait for the op right here.
                    self._host_wait(None)
                if self.is_completed():
                    self._complete(raw)
                else:
                    completer.add(self, raw)
            return self._fut

    def _host_wait(self, seconds: Optional[float]) -> None:
        """Blocks this thread (GPU work included) until the op is done or `seconds` pass."""
        try:
            self._work.host_wait(seconds)
        except Exception:  # noqa: BLE001 - the failure is read by _complete
            pass

    def _complete(self, raw: "torch.futures.Future") -> None:
        error = self._work.exception()
        raw.set_result(self._result if error is None else error)

    # -- point-to-point --------------------------------------------------------------------
    def _source_rank(self) -> int:
        """For a receive from any source: the group rank the message came from."""
        self.wait()
        return self._work.source

    source_rank = _source_rank

    def __repr__(self) -> str:
        return f"<plexus torch Work {self._work.what} {'done' if self.is_completed() else 'running'}>"


class Completer:
    """One thread per process group that completes the futures of its works.

    Collectives of a group complete in submission order, so the thread waits on them in order,
    blocked in the core with the GIL released. Point-to-point works complete in any order: while
    some are pending, the thread polls (1 ms growing to 50 ms) instead of blocking on one.
    """

    _STOP = object()

    def __init__(self, name: str):
        self._name = name
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._stopped = False

    def add(self, work: Work, raw: "torch.futures.Future") -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"plexus-futures-{self._name}",
                                                    daemon=True)
                    self._thread.start()
        self._q.put((work, raw))

    def is_current_thread(self) -> bool:
        return self._thread is not None and self._thread is threading.current_thread()

    def stop(self, join_timeout: float = 5.0) -> None:
        self._stopped = True
        if self._thread is not None:
            self._q.put(self._STOP)
            if self._thread is not threading.current_thread():
                self._thread.join(join_timeout)

    @staticmethod
    def _finish(work: Work, raw: "torch.futures.Future") -> None:
        try:
            work._complete(raw)
        except BaseException:  # noqa: BLE001 - a failing user callback must not kill the thread
            pass

    def _loop(self) -> None:
        pending: "collections.deque" = collections.deque()
        stopping = False
        poll = 0.001
        while True:
            if not pending:
                if stopping:
                    return
                item = self._q.get()  # blocks without the GIL
                if item is self._STOP:
                    return
                pending.append(item)
            while True:  # take whatever else arrived
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is self._STOP:
                    stopping = True
                else:
                    pending.append(item)
            # Complete, in order, everything that is done.
            progressed = False
            for item in list(pending):
                if item[0].is_completed():
                    pending.remove(item)
                    self._finish(*item)
                    progressed = True
            if not pending:
                poll = 0.001
                continue
            if stopping:
                # Shut down: the communicator was aborted, so the rest fail promptly.
                pending[0][0]._host_wait(0.05)
                continue
            if any(w._p2p for w, _ in pending):
                poll = 0.001 if progressed else min(poll * 2, 0.05)
                pending[0][0]._host_wait(poll)
            else:
                # Only collectives: block on the oldest (1 s slices, to notice new p2p works).
                pending[0][0]._host_wait(1.0)
