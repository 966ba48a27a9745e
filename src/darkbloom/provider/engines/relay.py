"""Generation events from an engine's worker (its own thread, or vLLM's own event loop) to the
agent's event loop, in order. Every engine needs this hand-over; it lives here once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from darkbloom.provider.engines.base import Finished, GenerationEvent


class EventRelay:
    """Made on the agent's loop; ``emit`` may be called from any thread. An exception emitted
    there is raised here, in the coroutine that reads the events."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()

    def emit(self, item: GenerationEvent | BaseException) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Each event until (and with) the Finished one."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
