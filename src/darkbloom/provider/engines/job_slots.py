"""A media model's slots (media.md): a blocking job waits for one while still watching its cancel
event, so a job cancelled while queued ends at once instead of after the jobs ahead of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from darkbloom.provider.engines.base import Cancelled

WAIT_S = 0.1  # how often a waiting job looks at its cancel event


class JobSlots:
    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._free = threading.Semaphore(self.slots)
        self._lock = threading.Lock()  # guards _busy
        self._busy = 0

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    @contextmanager
    def held(self, cancel: threading.Event) -> Iterator[None]:
        """One slot for the job's whole run; Cancelled if its cancel is set while it waits."""
        while not self._free.acquire(timeout=WAIT_S):
            if cancel.is_set():
                raise Cancelled()
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
            self._free.release()
