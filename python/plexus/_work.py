"""Work: the handle of an asynchronous call, as torch.distributed's Work behaves.

One Work serves the numpy API (returned as it is) and the torch backend (wrapped in its
dist.Work subclass). It holds the call's core works: the C++ core's, or those of the device paths
(plexus.device), which all answer wait/is_completed/failed/rethrow; a None core finished already.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional


class Work:
    """Returned by collectives called with async_op=True. Its rules are NCCL's:

    - wait(timeout=None): host arrays: blocks (without holding the GIL) until the op is done and
      raises its error if it failed; with a timeout in seconds it raises TimeoutError when the op
      is still running by then (the op itself goes on). Device arrays: makes the caller's current
      stream wait for the op, and returns without waiting for the GPU (between hosts through UCX,
      which does not run in stream order: blocks until the outputs are written);
    - is_completed(): True once the op is done, GPU work included (it asks the GPU, never blocks);
    - synchronize(): blocks the host until the op is done, GPU work included.
    """

    __slots__ = ("_cores", "_outputs", "_group", "_what")

    def __init__(self, cores: List[Any], outputs: List[Any], group: Any = None, what: str = ""):
        self._cores = cores
        self._outputs = outputs
        self._group = group  # for receives: maps the sender's group rank to its global rank
        self._what = what

    @property
    def what(self) -> str:
        """The call, for messages (asked of the core only when needed: it costs a string)."""
        return self._what or next((c.what for c in self._cores if c is not None), "plexus op")

    def wait(self, timeout: Optional[float] = None) -> bool:
        if timeout is not None and hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        for c in self._cores:
            if c is not None and not c.wait(timeout):  # GIL released; raises the op's error
                raise TimeoutError(f"{self.what} did not complete within {timeout} s")
        return True

    def synchronize(self) -> None:
        """Blocks the host until the op is done, GPU work included; raises its error."""
        self.host_wait(None)
        error = self.exception()
        if error is not None:
            raise error

    def host_wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks this thread until the op is done, GPU work included (futures, shutdown); False
        if it is still running after `timeout` seconds. Raises the op's error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for c in self._cores:
            if c is None or c.is_completed():
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not getattr(c, "host_wait", c.wait)(left):
                return False
        return True

    def is_completed(self) -> bool:
        for c in self._cores:
            if c is not None and not c.is_completed():
                return False
        return True

    def is_success(self) -> bool:
        return self.is_completed() and self.exception() is None

    def exception(self) -> Optional[BaseException]:
        """The op's first error, or None while it runs or after it succeeded."""
        for c in self._cores:
            if c is not None and c.failed():
                try:
                    c.rethrow()
                except Exception as e:  # noqa: BLE001 - handing the error back is the point
                    return e
        return None

    @property
    def source(self) -> int:
        """For a receive, once done: the global rank the message came from (-1 otherwise)."""
        core = self._cores[0] if self._cores else None
        src = -1 if core is None else core.source
        if src < 0 or self._group is None:
            return src
        return self._group.ranks[src]

    def result(self) -> List[Any]:
        self.wait()
        return list(self._outputs)

    def __repr__(self) -> str:
        state = "done" if self.is_completed() else "running"
        return f"<plexus.Work {self.what} {state}>"
