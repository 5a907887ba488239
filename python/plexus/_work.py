"""Work: the handle of an asynchronous collective, as torch.distributed's Work behaves."""

from __future__ import annotations

from typing import Any, List, Optional


class Work:
    """Returned by collectives called with async_op=True.

    wait(timeout=None) blocks (without holding the GIL) until the op is done and raises its
    error if it failed; with a timeout in seconds it raises TimeoutError when the op is still
    running by then (the op itself goes on).
    """

    __slots__ = ("_core", "_outputs", "_group")

    def __init__(self, core: Any, outputs: List[Any], group: Any = None):
        self._core = core
        self._outputs = outputs
        self._group = group  # for receives: maps the sender's group rank to its global rank

    def wait(self, timeout: Optional[float] = None) -> bool:
        if timeout is not None and hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        if not self._core.wait(timeout):
            raise TimeoutError(f"{self._core.what} did not complete within {timeout} s")
        return True

    def is_completed(self) -> bool:
        return self._core.is_completed()

    def is_success(self) -> bool:
        return self._core.is_completed() and not self._core.failed()

    def exception(self) -> Optional[BaseException]:
        """The op's error, or None while it runs or after it succeeded."""
        if not self._core.failed():
            return None
        try:
            self._core.rethrow()
        except Exception as e:  # noqa: BLE001 - handing the error back is the point
            return e
        return None

    @property
    def source(self) -> int:
        """For a receive, once done: the global rank the message came from (-1 otherwise)."""
        src = self._core.source
        if src < 0 or self._group is None:
            return src
        return self._group.ranks[src]

    def result(self) -> List[Any]:
        self.wait()
        return list(self._outputs)

    def __repr__(self) -> str:
        state = "done" if self._core.is_completed() else "running"
        return f"<plexus.Work {self._core.what} {state}>"
