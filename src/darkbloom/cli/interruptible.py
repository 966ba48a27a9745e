"""Ctrl-C for a command that waits on the network behind a Rich spinner, without hanging.

Python raises KeyboardInterrupt at whatever bytecode the main thread is on. Landing between a
lock's ``acquire()`` and the ``try`` that releases it (httpcore's pool lock, Rich's Live lock as
the spinner starts: both acquire in an ``__enter__`` of their own) leaves that lock held, and
the cleanup that follows (closing the client, stopping the spinner) waits for it forever. Here
SIGINT only sets a flag; the blocking work runs in a daemon thread; the main thread sleeps in
short ticks and raises KeyboardInterrupt itself, from its own loop, where no lock is held.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

TICK_S = 0.05  # how soon a Ctrl-C is seen


class Interruptible:
    """``with Interruptible() as waiting: result = waiting.run(work)``; Ctrl-C raises
    KeyboardInterrupt from ``run`` and nowhere else: a press while no work runs cancels the next
    ``run``, a press after the last one cancels nothing (its work is done: a token kept, a
    download complete). A second press exits at once (130), for a main thread stuck elsewhere,
    e.g. on a terminal paused with Ctrl-S. Off the main thread, or where SIGINT is ignored (a
    background job), Python's behaviour stays."""

    def __init__(self) -> None:
        self.cancelled = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Interruptible:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None)):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.cancelled:  # the second press: whatever the main thread waits on, leave now
            with contextlib.suppress(Exception):
                if sys.stdout.isatty():  # the spinner hid the cursor
                    os.write(sys.stdout.fileno(), b"\x1b[?25h\n")
            os._exit(130)
        self.cancelled = True  # a plain store: nothing here can be left half-done

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` in a daemon thread: its result, or its exception re-raised. On Ctrl-C the
        thread is abandoned mid-call (the process is about to exit)."""
        if self.cancelled:
            raise KeyboardInterrupt  # pressed since the last wait
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def target() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as exc:  # handed to the caller's thread below
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=target, name="interruptible", daemon=True).start()
        while not done.is_set():  # is_set reads a flag: no lock a signal could strand
            if self.cancelled:
                raise KeyboardInterrupt
            time.sleep(TICK_S)
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value
