"""Generation events from an engine's worker (its own thread, or vLLM's own event loop) to the
agent's event loop, in order. Every engine needs this hand-over; it lives here once.

A hand-over wakes the loop (a write to its self-pipe, a syscall and a context switch) only when
the loop has not been woken for an earlier one it has yet to run: events that arrive while the
loop is busy, or together (several sequences of one engine step, or several slots), cost one
wake-up between them. An idle stream's token still wakes the loop at once."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from darkbloom.provider.engines.base import Finished, GenerationEvent

T = TypeVar("T")


class _Inbox:
    """One per event loop: calls from any thread, run on the loop in the order they came."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._woken = False

    def push(self, action: Callable[[T], object], argument: T) -> None:
        self._calls.append((action, argument))
        if not self._woken:
            self._woken = True
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        # Cleared before taking calls: one pushed from now on either is taken below or wakes
        # the loop again (deque appends and pops are atomic).
        self._woken = False
        calls = self._calls
        while calls:
            action, argument = calls.popleft()
            try:
                action(argument)
            except Exception as exc:  # as the loop treats a failing callback: report, go on
                self._loop.call_exception_handler({"message": "engine hand-over failed",
                                                   "exception": exc})


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


class EventRelay:
    """Made on the agent's loop; ``emit`` may be called from any thread. An exception emitted
    there is raised here, in the coroutine that reads the events."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        inbox = _INBOXES.get(self._loop)
        if inbox is None:
            inbox = _INBOXES[self._loop] = _Inbox(self._loop)
        self._inbox = inbox
        self._events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()

    def emit(self, item: GenerationEvent | BaseException) -> None:
        self.call(self._events.put_nowait, item)

    def put(self, item: GenerationEvent | BaseException) -> None:
        """``emit`` for a caller already on the agent's loop (an engine that hands over a whole
        step's events in one call)."""
        self._events.put_nowait(item)

    def call(self, action: Callable[[T], object], argument: T) -> None:
        """Run ``action(argument)`` on the agent's loop, from any thread, after everything handed
        over before it. Once that loop has closed (its owner finished while the worker was still
        winding down) there is nobody left to tell: nothing happens, rather than a traceback from
        the worker thread."""
        with contextlib.suppress(RuntimeError):  # call_soon_threadsafe on a closed loop
            self._inbox.push(action, argument)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Each event until (and with) the Finished one."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
