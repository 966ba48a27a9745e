"""Moving a committed answer to the consumer: a stream event by event (cancelling the provider if the
consumer leaves), or a non-streamed body once complete; then the pipeline closes the request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import TypeVar

from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from darkbloom.coordinator import media_answer
from darkbloom.coordinator.api.errors import stream_error_event
from darkbloom.coordinator.commit import CHARGED_AS_DELIVERED, Finished
from darkbloom.coordinator.pipeline import Opened, Pipeline
from darkbloom.coordinator.sender_sealing import seal_event
from darkbloom.crypto import Channel
from darkbloom.errors import DarkbloomError, ProviderFailed
from darkbloom.protocol.blind import sealed_body
from darkbloom.protocol.sse import RECEIPT_COMMENT

T = TypeVar("T")
RECEIPT_MARK = RECEIPT_COMMENT.encode()
_COMPLETE_GRACE_S = 5.0  # how long a finished stream waits for inference_complete after a hang-up


class ClientGone(Exception):
    """The consumer disconnected before its response was ready."""


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it (and so its provider attempt) if the consumer hangs up."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone
    return task.result()


class SSERelay(Response):
    """Relays a committed stream chunk by chunk and cancels the provider if the consumer leaves."""

    media_type = "text/event-stream"

    def __init__(self, pipeline: Pipeline, opened: Opened, headers: dict[str, str],
                 reply_channel: Channel | None = None) -> None:
        self.reply_channel = reply_channel  # sender-sealed request: every event goes back sealed
        # No super().__init__: Response would add `content-length: 0` for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in {
            **headers, "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache", "x-accel-buffering": "no"}.items()]
        self.pipeline = pipeline
        self.opened = opened
        # Set once the receipt comment (the end of the content) has been relayed: a consumer
        # that hangs up after that has its whole response, so it is not a cancel.
        self.content_done = False
        self.relayed = 0  # events sent to the consumer
        self.finished: Finished | None = None
        self.failure: DarkbloomError | None = None  # the provider failed: nothing is charged
        self.cut: DarkbloomError | None = None  # we ended a delivering stream: charged for what went
        self._items = pipeline.events(opened)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not pump.done() and self.content_done:
                await asyncio.wait({pump}, timeout=_COMPLETE_GRACE_S)
        finally:
            watcher.cancel()
            gone = not pump.done()
            if gone:
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            self.pipeline.committer.dispatcher.cancel(self.opened.committed.attempt)  # no-op once done
            self.pipeline.close(self.opened, self.finished, self.failure, self.relayed, self.cut)
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _event(self, payload: bytes) -> bytes:
        if self.reply_channel is not None:
            payload = seal_event(self.reply_channel, payload)
        return payload + b"\n\n"

    async def _pump(self, send: Send) -> None:
        opened = self.opened
        attempt = opened.committed.attempt
        # Events that arrived together are written in one go; an event alone, at once.
        gathered = [opened.committed.first_chunk]
        try:
            if not attempt.ready():
                await self._write(send, gathered)
            async for item in self._items:
                if isinstance(item, Finished):
                    await self._write(send, gathered)
                    self.finished = item
                    opened.outcome.keep_receipt(item.receipt)
                    break
                gathered.append(item)
                if not attempt.ready():  # nothing more has come: write what has gathered
                    await self._write(send, gathered)
            await self._write(send, gathered)
        except DarkbloomError as exc:
            await self._write(send, gathered)
            # Status is already 200: report in-band, then end without [DONE] (api.md §2).
            if isinstance(exc, CHARGED_AS_DELIVERED):
                self.cut = exc
            else:
                self.failure = exc
            await send({"type": "http.response.body", "more_body": True,
                        "body": self._event(stream_error_event(exc, opened.outcome.endpoint)[:-2])})

    async def _write(self, send: Send, events: list[bytes]) -> None:
        """Relay ``events`` (and empty the list) in one write: one syscall and one wake-up of the
        consumer for all of them, however many arrived at once."""
        if not events:
            return
        opened = self.opened
        first = self.relayed == 0
        body = b"".join(map(self._event, events))
        # uvicorn waits for the transport to drain before it writes: a send cancelled there
        # wrote nothing, so nothing is counted until it returns.
        await send({"type": "http.response.body", "body": body, "more_body": True})
        opened.outcome.bytes_out += len(body)
        if any(event.startswith(RECEIPT_MARK) for event in events):
            self.content_done = True
        if first:  # committed: written after the first chunk is out, off the time to first token
            self.pipeline.begin(opened)
        self.relayed += len(events)
        if opened.prepared.sealed_for is None:  # clear events are kept to recount the tokens
            opened.delivered.extend(events[1:] if first else events)  # (the first is committed's)
        events.clear()


async def collect(pipeline: Pipeline, opened: Opened) -> tuple[bytes, Finished]:
    """A non-streamed answer, whole. It runs to completion even if the consumer has gone (the
    answer was produced and is charged; billing.md §4)."""
    committed = opened.committed
    if (job := opened.prepared.media) is not None:  # pieces of one body, in order (media.md)
        pieces = [committed.first_chunk]
        async for item in pipeline.events(opened):
            if isinstance(item, Finished):
                body = b"".join(pieces)
                return body, await media_answer.checked(pipeline.committer.dispatcher,
                                                        committed.attempt, job, body, item)
            pieces.append(item)
        raise ProviderFailed("provider ended the response without completing it")
    blind = opened.prepared.sealed_for is not None
    if not blind and not committed.first_chunk.startswith(b"data: "):
        raise ProviderFailed("invalid provider response")
    chunks = [committed.first_chunk]
    async for item in pipeline.events(opened):
        if isinstance(item, Finished):
            if blind:  # every sealed chunk in order, for the consumer to open
                sealed = [str(json.loads(c[len(b"data: "):])["sealed"]) for c in chunks]
                return sealed_body(committed.attempt.request_id, sealed), item
            return committed.first_chunk[len(b"data: "):], item
        chunks.append(item)
    raise ProviderFailed("provider ended the response without completing it")
