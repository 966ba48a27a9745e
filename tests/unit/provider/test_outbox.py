"""The provider's writer (issue 14): frames ready together go out as one batch, in order, only
to a coordinator that reads batches; a frame alone goes out alone, at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from pydantic import BaseModel

from darkbloom.protocol import decode, encode
from darkbloom.protocol.frames import (
    MAX_BATCH_FRAMES,
    PROVIDER_FRAME_TYPES,
    AttestationResponse,
    FrameBatch,
    InferenceAccepted,
    InferenceComplete,
    InferenceResponseChunk,
    Sealed,
    Usage,
    provider_frame_adapter,
)
from darkbloom.provider import outbox
from darkbloom.provider.outbox import Outbox


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False

    async def send(self, message: str) -> None:
        if self.closed:
            raise websockets.ConnectionClosed(None, None)
        self.sent.append(message)


def chunk(seq: int, request_id: str = "r", size: int = 8) -> InferenceResponseChunk:
    return InferenceResponseChunk(request_id=request_id, seq=seq, encrypted_data=Sealed(
        ephemeral_public_key="AAAA", ciphertext="B" * size))


def received(socket: _Socket) -> list[list[BaseModel]]:
    """Each message the coordinator got, as the frames it handles in order."""
    messages = []
    for text in socket.sent:
        frame = decode(text, provider_frame_adapter, PROVIDER_FRAME_TYPES)
        messages.append(list(frame.frames) if isinstance(frame, FrameBatch) else [frame])
    return messages


async def _drain(box: Outbox, socket: _Socket) -> None:
    writer = asyncio.create_task(box.run())
    for _ in range(5):
        await asyncio.sleep(0)
    writer.cancel()


async def test_frames_ready_together_go_out_as_one_batch_in_order() -> None:
    socket = _Socket()
    box = Outbox(socket, lambda: True)  # type: ignore[arg-type]
    frames: list[BaseModel] = [InferenceAccepted(request_id="q"), chunk(0), chunk(1), chunk(0, "q"),
                               InferenceComplete(request_id="r", usage=Usage(prompt_tokens=1,
                                                                             completion_tokens=2))]
    for frame in frames:
        await box.put(frame)
    await _drain(box, socket)
    assert received(socket) == [frames]
    assert json.loads(socket.sent[0])["frames"][1] == json.loads(encode(frames[1]))


async def test_a_frame_alone_goes_out_alone_and_at_once() -> None:
    socket = _Socket()
    box = Outbox(socket, lambda: True)  # type: ignore[arg-type]
    writer = asyncio.create_task(box.run())
    for seq in range(3):
        await box.put(chunk(seq))
        for _ in range(3):
            await asyncio.sleep(0)  # the writer runs between puts: nothing waits for company
        assert len(socket.sent) == seq + 1
    writer.cancel()
    assert received(socket) == [[chunk(0)], [chunk(1)], [chunk(2)]]
    assert all(json.loads(text)["type"] == "inference_response_chunk" for text in socket.sent)


async def test_no_batch_for_a_coordinator_that_does_not_read_them() -> None:
    socket = _Socket()
    box = Outbox(socket, lambda: False)  # type: ignore[arg-type]
    for seq in range(4):
        await box.put(chunk(seq))
    await _drain(box, socket)
    assert received(socket) == [[chunk(seq)] for seq in range(4)]


async def test_other_frames_go_alone_between_batches_and_batches_are_bounded() -> None:
    socket = _Socket()
    box = Outbox(socket, lambda: True)  # type: ignore[arg-type]
    answer = AttestationResponse(nonce="n", signature="s", public_key="k")
    frames: list[BaseModel] = [chunk(0), chunk(1), answer, chunk(2)]
    frames += [chunk(seq) for seq in range(3, 3 + MAX_BATCH_FRAMES + 1)]
    for frame in frames:
        await box.put(frame)
    await _drain(box, socket)
    messages = received(socket)
    assert [len(m) for m in messages] == [2, 1, MAX_BATCH_FRAMES, 2]
    assert [f for m in messages for f in m] == frames
    big = [chunk(seq, size=outbox.MAX_BATCH_BYTES // 3) for seq in range(4)]
    for frame in big:
        await box.put(frame)
    socket.sent.clear()
    await _drain(box, socket)
    assert [len(m) for m in received(socket)] == [2, 2]
    assert all(len(text) <= outbox.MAX_BATCH_BYTES + 1024 for text in socket.sent)


async def test_senders_wait_only_when_far_behind(monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox, "HIGH_WATER_BYTES", 300)
    socket = _Socket()
    box = Outbox(socket, lambda: True)  # type: ignore[arg-type]
    await box.put(chunk(0))  # under the mark: returns at once
    blocked = asyncio.create_task(box.put(chunk(1, size=200)))
    await asyncio.sleep(0)
    assert not blocked.done()
    await _drain(box, socket)
    assert blocked.done()
    assert received(socket) == [[chunk(0), chunk(1, size=200)]]


async def test_a_closed_connection_stops_the_writer_without_ending_the_session() -> None:
    """The reader sees why the connection closed (a fatal close code stops the agent); a writer
    that ended first would make the session end as an ordinary lost connection."""
    socket = _Socket()
    socket.closed = True
    box = Outbox(socket, lambda: True)  # type: ignore[arg-type]
    await box.put(chunk(0))
    writer = asyncio.create_task(box.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not writer.done()
    writer.cancel()
