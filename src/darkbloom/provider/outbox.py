"""Frames on their way to the coordinator, written in order by one task per connection.

Senders queue and go on; the writer takes whatever has queued up since its last write. Alone, a
frame goes out as soon as the writer runs (an idle stream's token is never held back). When
several are waiting (concurrent streams whose tokens came in one engine step, a stream's
start or end, a writer that fell behind) and the coordinator reads batches, the request frames
among them go out as one ``frame_batch`` message: one write, one wake-up of the coordinator,
instead of one per frame. Every frame keeps its own seq and sealing inside the batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import websockets
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection

from darkbloom.protocol import encode
from darkbloom.protocol.frames import (
    MAX_BATCH_FRAMES,
    PROTOCOL_VERSION,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceResponseChunk,
)

BATCHABLE = (InferenceAccepted, InferenceResponseChunk, InferenceComplete, InferenceError)
MAX_BATCH_BYTES = 256 * 1024  # a batch stays far below the coordinator's 10 MiB frame limit
HIGH_WATER_BYTES = 4 * 1024 * 1024  # queued beyond this, senders wait for the writer
_BATCH_HEAD = f'{{"v":{PROTOCOL_VERSION},"type":"frame_batch","frames":['


class Outbox:
    def __init__(self, ws: ClientConnection, batches: Callable[[], bool]) -> None:
        self._ws = ws
        self._batches = batches  # whether the coordinator said it reads frame_batch
        self._queue: deque[tuple[str, bool]] = deque()  # encoded frame, batchable
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, frame: BaseModel) -> None:
        """Queue a frame; wait only while the writer is far behind (the socket is the limit)."""
        text = encode(frame)
        self._queue.append((text, isinstance(frame, BATCHABLE)))
        self._queued_bytes += len(text)
        self._ready.set()
        if self._queued_bytes > HIGH_WATER_BYTES:
            self._room.clear()
            await self._room.wait()

    def messages(self) -> list[str]:
        """Everything queued, as the messages to write: runs of request frames joined into
        batches within the bounds, any other frame alone, all in queue order."""
        batching = self._batches()
        out: list[str] = []
        run: list[str] = []
        size = 0
        while self._queue:
            text, batchable = self._queue.popleft()
            self._queued_bytes -= len(text)
            if not (batching and batchable):
                out.extend(_joined(run))
                run, size = [], 0
                out.append(text)
                continue
            if run and (len(run) == MAX_BATCH_FRAMES or size + len(text) > MAX_BATCH_BYTES):
                out.extend(_joined(run))
                run, size = [], 0
            run.append(text)
            size += len(text) + 1
        out.extend(_joined(run))
        return out

    async def run(self) -> None:
        """The writer, until cancelled. A closed connection stops it writing, nothing more: the
        reader is the one that sees why it closed (a fatal close code stops the agent)."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                for message in self.messages():
                    await self._ws.send(message)
                if self._queued_bytes <= HIGH_WATER_BYTES:
                    self._room.set()
        except websockets.ConnectionClosed:
            await asyncio.Event().wait()


def _joined(run: list[str]) -> list[str]:
    if len(run) <= 1:
        return run
    return [_BATCH_HEAD + ",".join(run) + "]}"]
