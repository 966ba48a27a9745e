"""The stream relay's writes (issue 14): events that arrived together go to the consumer in one
write, an event alone goes at once, in order, with what was relayed counted as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from darkbloom.coordinator.commit import Finished
from darkbloom.coordinator.dispatch import Attempt, Event
from darkbloom.coordinator.relay import SSERelay
from darkbloom.coordinator.store.requests_log import RequestOutcome
from darkbloom.errors import ProviderFailed
from darkbloom.protocol.frames import Usage


class _Pipeline:
    """The pipeline's part in a relay: the committed attempt's events, begin and close."""

    def __init__(self) -> None:
        self.begun = 0
        self.closed: list[tuple[Any, ...]] = []
        self.committer = SimpleNamespace(dispatcher=SimpleNamespace(cancel=lambda attempt: None))

    async def events(self, opened: Any) -> AsyncIterator[bytes | Finished]:
        while True:  # as Committer.events: chunks, then Finished, or the error
            event = await opened.committed.attempt.next_event(30)
            if event.kind == "chunk":
                yield event.data
            elif event.kind == "complete":
                yield Finished(Usage(prompt_tokens=1, completion_tokens=3))
                return
            else:
                raise event.error

    def begin(self, opened: Any) -> None:
        self.begun += 1

    def close(self, opened: Any, finished: Any, failure: Any, relayed: int, cut: Any = None) -> None:
        self.closed.append((finished, failure, relayed))


def _opened() -> Any:
    attempt = Attempt(request_id="r", provider=None, channel=None, demand=None,  # type: ignore[arg-type]
                      stream=True, deadline=float("inf"))
    outcome = RequestOutcome(id="o", endpoint="/v1/chat/completions", model="m", stream=True,
                             created_at=datetime.now(UTC))
    return SimpleNamespace(committed=SimpleNamespace(attempt=attempt, first_chunk=b"data: 0"),
                           prepared=SimpleNamespace(sealed_for=None), outcome=outcome, delivered=[])


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_events_that_arrive_together_are_written_together_and_one_alone_at_once() -> None:
    pipeline, opened = _Pipeline(), _opened()
    attempt: Attempt = opened.committed.attempt
    written: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            written.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    relay = SSERelay(pipeline, opened, {})  # type: ignore[arg-type]
    running = asyncio.create_task(relay({"type": "http"}, receive, send))
    await _settle()
    assert written == [b"data: 0\n\n"] and pipeline.begun == 1  # the first chunk alone, at once
    for n in (1, 2, 3):  # came in together (one frame batch): one write
        attempt.events.put_nowait(Event("chunk", data=b"data: %d" % n))
    await _settle()
    assert written[1:] == [b"data: 1\n\ndata: 2\n\ndata: 3\n\n"]
    attempt.events.put_nowait(Event("chunk", data=b"data: 4"))
    await _settle()
    assert written[2:] == [b"data: 4\n\n"]
    attempt.events.put_nowait(Event("chunk", data=b": darkbloom-receipt {}"))
    attempt.events.put_nowait(Event("chunk", data=b"data: [DONE]"))
    attempt.events.put_nowait(Event("complete"))
    await asyncio.wait_for(running, 5)
    assert written[3:] == [b": darkbloom-receipt {}\n\ndata: [DONE]\n\n", b""]
    assert relay.relayed == 7 and relay.content_done and relay.finished is not None
    assert opened.delivered == [b"data: 1", b"data: 2", b"data: 3", b"data: 4",
                                b": darkbloom-receipt {}", b"data: [DONE]"]
    assert opened.outcome.bytes_out == sum(map(len, written))
    assert pipeline.closed == [(relay.finished, None, 7)]


async def test_events_gathered_before_a_failure_go_out_before_its_error_event() -> None:
    pipeline, opened = _Pipeline(), _opened()
    attempt: Attempt = opened.committed.attempt
    attempt.events.put_nowait(Event("chunk", data=b"data: 1"))
    attempt.events.put_nowait(Event("error", error=ProviderFailed("provider disconnected")))
    written: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            written.append(message.get("body", b""))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    relay = SSERelay(pipeline, opened, {})  # type: ignore[arg-type]
    await asyncio.wait_for(relay({"type": "http"}, receive, send), 5)
    assert written[0] == b"data: 0\n\ndata: 1\n\n"
    assert b"provider disconnected" in written[1] and written[-1] == b""
    assert relay.relayed == 2 and relay.failure is not None
    assert pipeline.closed == [(None, relay.failure, 2)]
