"""The worker-to-loop hand-over every engine uses."""

from __future__ import annotations

import asyncio
import threading

import pytest

from darkbloom.provider.engines.base import Finished, Started, TextDelta
from darkbloom.provider.engines.relay import EventRelay


async def test_events_from_a_thread_arrive_in_order_and_an_exception_is_raised_here() -> None:
    relay = EventRelay()
    worker = threading.Thread(target=lambda: [relay.emit(e) for e in (
        Started(3), TextDelta("a"), TextDelta("b"), Finished("stop", 3, 2), TextDelta("late"))])
    worker.start()
    assert [e async for e in relay.events()] == [Started(3), TextDelta("a"), TextDelta("b"),
                                                 Finished("stop", 3, 2)]
    worker.join()
    failing = EventRelay()
    failing.emit(ValueError("engine broke"))
    with pytest.raises(ValueError, match="engine broke"):
        async for _ in failing.events():
            pass


def test_a_worker_winding_down_after_the_loop_closed_does_not_raise() -> None:
    """`darkbloom benchmark` printed a traceback from the llama thread: its last hand-over came
    after asyncio.run had closed the loop."""
    async def make() -> EventRelay:
        return EventRelay()

    relay = asyncio.run(make())  # the loop is closed once this returns
    done: list[BaseException] = []

    def worker() -> None:
        try:
            relay.emit(Finished("stop", 1, 1))
            relay.call(print, "never")
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert done == []
