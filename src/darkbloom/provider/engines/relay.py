"""Generation events from an engine's worker (its own thread, or vLLM's own event loop) to the
agent's event loop, in order. Every engine needs this hand-over; it lives here once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from darkbloom.provider.engines.base import Finished, GenerationEvent

T = TypeVar("T")


class EventRelay:
    """Made on the agent's loop; ``emit`` may be called from any thread. An exception emitted
    there is raised here, in the coroutine that reads the events."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()

    def emit(self, item: GenerationEvent | BaseException) -> None:
        self.call(self._events.put_nowait, item)

    def put(self, item: GenerationEvent | BaseException) -> None:
        """``emit`` for a caller already on the agent's loop (an engine that hands over a whole
        step's events in one call)."""
        self._events.put_nowait(item)

    def call(self, action: Callable[[T], object], argument: T) -> None:
        """Run ``action(argument)`` on the agent's loop, from any thread. Once that loop has closed
        (its owner finished while the worker was still winding down) there is nobody left to
        tell: nothing happens, rather than a traceback from the worker thread."""
        with contextlib.suppress(RuntimeError):  # call_soon_threadsafe on a closed loop
            self._loop.call_soon_threadsafe(action, argument)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Each event until (and with) the Finished one."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
