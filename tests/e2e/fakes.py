"""A fake provider over a real WebSocket: it registers like `darkbloom serve` but runs no model, so a
test decides how it answers challenges and requests. Everything it signs is built with the
provider's own functions (`attestation.build`, `challenge_bytes`, `status_bytes`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import websockets
from websockets.asyncio.client import ClientConnection

from darkbloom.crypto import KeyPair, SessionChannel, public_key_from_b64
from darkbloom.crypto.challenge import challenge_bytes, status_bytes
from darkbloom.crypto.signing import IdentityKey
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import Hardware
from darkbloom.provider import attestation
from tests.e2e.harness import MODEL, Coordinator

# Blob posture (camelCase, as attestation.posture() reports it) and answer posture (snake_case).
BLOB_POSTURE = {"platform": "linux", "ptraceScope": 1, "kernelLockdown": "none",
                "coreDumpsDisabled": True, "secureBootEnabled": False}
POSTURE = {"platform": "linux", "core_dumps_disabled": True, "ptrace_scope": 1,
           "kernel_lockdown": "none", "secure_boot_enabled": False}

Answer = Callable[[IdentityKey, KeyPair, dict[str, Any]], dict[str, Any] | None]


def signed_blob(identity: IdentityKey, keys: KeyPair, **posture: object) -> dict[str, Any]:
    """The provider's own blob builder, with the posture it reports replaced."""
    with mock.patch.object(attestation, "posture", lambda: {**BLOB_POSTURE, **posture}):
        return attestation.build(identity, keys.public_b64, Hardware(chip_name="test"), "llama.cpp")


def good_answer(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any],
                **posture: object) -> dict[str, Any]:
    nonce, stamp = challenge["nonce"], challenge["timestamp"]
    fields = {**POSTURE, **posture}
    return {"type": "attestation_response", "nonce": nonce, "public_key": keys.public_b64,
            "signature": identity.sign(challenge_bytes(nonce, stamp)),
            "status_signature": identity.sign(status_bytes(nonce, stamp, fields)), **fields}


class Job:
    """One inference request as a scripted fake (``behaviour=``) sees it, and the frames it can
    answer with, sealed as `darkbloom serve` seals them. ``drop()`` cuts the TCP connection with
    no close frame, as a crashed provider would."""

    def __init__(self, fake: FakeProvider, ws: ClientConnection, frame: dict[str, Any]) -> None:
        self.fake, self.ws, self.frame = fake, ws, frame
        self.request_id: str = frame["request_id"]
        self.stream: bool = frame["stream"]
        self.endpoint: str = frame["endpoint"]
        self.seq = 0
        sealed = frame["encrypted_body"]
        self.channel = SessionChannel(fake.keys, public_key_from_b64(sealed["ephemeral_public_key"]),
                                      "provider")

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({**frame, "request_id": self.request_id}))

    async def accepted(self) -> None:
        await self._send({"type": "inference_accepted"})

    async def chunk(self, event: str) -> None:
        """One SSE event (a non-streamed body is one ``data: `` event)."""
        ciphertext = self.channel.seal("response", self.request_id, self.seq, event.encode())
        await self._send({"type": "inference_response_chunk", "seq": self.seq, "encrypted_data": {
            "ephemeral_public_key": self.fake.keys.public_b64, "ciphertext": ciphertext}})
        self.seq += 1

    async def complete(self, prompt: int = 5, completion: int = 1) -> None:
        await self._send({"type": "inference_complete",
                          "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})

    async def error(self, status: int = 500, message: str = "scripted failure") -> None:
        await self._send({"type": "inference_error", "error": message, "status_code": status})

    async def cancelled(self, wait_s: float = 30) -> bool:
        """Wait until the coordinator sends ``cancel`` for this request."""
        for _ in range(int(wait_s / 0.02)):
            if self.request_id in self.fake.cancels:
                return True
            await asyncio.sleep(0.02)
        return False

    def drop(self) -> None:
        self.ws.transport.abort()


Behaviour = Callable[[Job], Awaitable[None]]


class FakeProvider:
    """``async with FakeProvider(coordinator) as fake``: registered on entry (``fake.registered``),
    then answering each challenge with ``answer`` (None: never) and each inference request with
    ``on_request`` (None: silence) until the block ends or the coordinator closes the socket.

    For fault injection: ``behaviour`` scripts each request as a task (``Job``), ``heartbeat_s``
    sends a heartbeat that often while ``heartbeating`` is true (a coordinator with a short
    heartbeat timeout evicts a fake that stays silent), ``register=False`` connects and never
    registers, and ``cancels`` lists the request ids the coordinator cancelled."""

    def __init__(self, coordinator: Coordinator, *, identity: IdentityKey | None = None,
                 keys: KeyPair | None = None, blob: dict[str, Any] | None = None,
                 public_key: str | None = None, answer: Answer | None = good_answer,
                 on_request: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 behaviour: Behaviour | None = None, heartbeat_s: float | None = None,
                 register: bool = True, token: str | None = None,
                 model: dict[str, Any] | None = None, **blob_posture: object) -> None:
        self.coordinator = coordinator
        self.token = token or coordinator.provider_token  # another account's, say
        self.identity = identity or IdentityKey.generate()
        self.keys = keys or KeyPair.generate()
        self.blob = blob if blob is not None else signed_blob(self.identity, self.keys, **blob_posture)
        self.public_key = public_key or self.keys.public_b64  # another's, to replay its blob
        self.answer, self.on_request = answer, on_request
        self.registered: dict[str, Any] = {}
        self.updates: list[dict[str, Any]] = []
        self.challenges = 0
        self.requests = 0
        self.close_code: int | None = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.behaviour, self.heartbeat_s, self.register = behaviour, heartbeat_s, register
        self.model = model or {}  # more fields of its one model (slots, capabilities)
        self.heartbeating = True
        self.cancels: list[str] = []
        self.jobs: list[Job] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeProvider:
        self._ws = await websockets.connect(self.coordinator.ws_url, additional_headers={
            "Authorization": f"Bearer {self.token}"})
        if not self.register:  # a socket that never registers (the register timer)
            self._task = asyncio.create_task(self._serve(self._ws))
            return self
        await self._ws.send(json.dumps({
            "type": "register", "public_key": self.public_key, "backend": "llama.cpp",
            "models": [{"id": MODEL, "weight_hash": DEFAULT_MODEL.weight_hash, **self.model}],
            "attestation": self.blob}))
        self.registered = json.loads(await asyncio.wait_for(self._ws.recv(), 10))
        assert self.registered["type"] == "registered"
        self._task = asyncio.create_task(self._serve(self._ws))
        if self.heartbeat_s is not None:
            self._spawn(self._beat(self._ws, self.heartbeat_s))
        return self

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _beat(self, ws: ClientConnection, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self.heartbeating:
                try:
                    await ws.send(json.dumps({"type": "heartbeat", "status": "idle",
                                              "warm_models": [MODEL]}))
                except websockets.ConnectionClosed:
                    return

    async def __aexit__(self, *_: object) -> None:
        assert self._ws is not None and self._task is not None
        await self._ws.close()
        await self._task

    async def send(self, frame: dict[str, Any]) -> None:
        """Send any frame as this provider (a heartbeat with chosen health, say)."""
        assert self._ws is not None
        await self._ws.send(json.dumps(frame))

    async def closed(self) -> int | None:
        """Wait for the coordinator to close the socket (30 s at most); its close code."""
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), 30)
        return self.close_code

    async def _serve(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame["type"] == "attestation_challenge":
                    self.challenges += 1
                    reply = self.answer(self.identity, self.keys, frame) if self.answer else None
                    if reply is not None:
                        await ws.send(json.dumps(reply))
                elif frame["type"] == "trust_update":
                    self.updates.append(frame)
                elif frame["type"] == "inference_request":
                    self.requests += 1
                    if self.on_request is not None:
                        await ws.send(json.dumps(self.on_request(frame)))
                    elif self.behaviour is not None:
                        job = Job(self, ws, frame)
                        self.jobs.append(job)
                        self._spawn(self._run(job))
                elif frame["type"] == "cancel":
                    self.cancels.append(frame["request_id"])
        except websockets.ConnectionClosed:
            pass
        self.close_code = ws.close_code
        for task in list(self._tasks):  # the socket is gone: scripts and heartbeats end with it
            task.cancel()

    async def _run(self, job: Job) -> None:
        assert self.behaviour is not None
        try:
            await self.behaviour(job)
        except websockets.ConnectionClosed:
            pass
