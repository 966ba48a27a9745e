"""The worker-to-loop hand-over every engine uses."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

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


async def test_hand_overs_that_come_together_wake_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: each hand-over wrote to the loop's self-pipe (a syscall and a wake-up); events
    that arrive before the loop runs (several sequences of one engine step, a loop that fell
    behind) now share one wake-up, across relays, and still arrive in order."""
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        wakeups.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    relays = [EventRelay() for _ in range(3)]
    worker = threading.Thread(target=lambda: [r.emit(e) for e in (
        Started(1), TextDelta("a"), TextDelta("b"), Finished("stop", 1, 2)) for r in relays])
    worker.start()
    worker.join()  # the loop is held here: everything arrives before it runs
    assert len(wakeups) == 1
    for relay in relays:
        assert [e async for e in relay.events()] == [Started(1), TextDelta("a"), TextDelta("b"),
                                                     Finished("stop", 1, 2)]
    alone = EventRelay()
    alone.emit(TextDelta("c"))  # the loop has run since: the next hand-over wakes it again
    assert len(wakeups) == 2
    alone.emit(Finished("stop", 0, 1))
    assert [e async for e in alone.events()] == [TextDelta("c"), Finished("stop", 0, 1)]
