"""The core work of a call whose last step is enqueued on a CUDA stream (CUDA IPC, the chunked
pipeline): it answers what the C++ core's Work answers, over an event recorded after that step."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional


class StreamWork:
    """wait() makes the caller's current stream wait for the event (the host does not block),
    is_completed() asks the GPU, host_wait() blocks this thread (futures, shutdown)."""

    source = -1

    def __init__(self, what: str, event: Any, current_stream: Callable[[], Any]):
        self.what, self.event, self.current_stream = what, event, current_stream

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.event.stream_wait(self.current_stream())
        return True

    def is_completed(self) -> bool:
        return bool(self.event.done())

    def host_wait(self, timeout: Optional[float] = None) -> bool:
        """False if the GPU has not done the work within `timeout` seconds."""
        if timeout is None:
            self.event.wait()
            return True
        deadline, pause = time.monotonic() + timeout, 50e-6
        while not self.is_completed():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 5e-3)
        return True

    def failed(self) -> bool:
        return False

    def rethrow(self) -> None:
        return None
