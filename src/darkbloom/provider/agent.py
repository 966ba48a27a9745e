"""The provider's connection to the coordinator: dial out, register, heartbeat, serve, reconnect.

Each connection is a session; when it drops every in-flight request is aborted (never resumed)
and the agent redials with backoff 1 s doubling to 5 s, reset after a successful registration.
Given several coordinator URLs it holds one session at a time and moves round robin to the next
URL when a session ends or a dial fails; the backoff is waited once per cycle over the URLs
(`CoordinatorRotation`, docs/provider-failover.md).
Close codes 4000 (replaced by another process with the same identity key), 4001 (bad token) and
4003 (version too old) stop the agent, whichever coordinator sent them: retrying cannot help.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import websockets
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection

from darkbloom import __version__
from darkbloom.config import ProviderSettings
from darkbloom.crypto import KeyPair
from darkbloom.crypto.challenge import challenge_bytes, challenge_problem, status_bytes
from darkbloom.crypto.signing import IdentityKey
from darkbloom.logcontext import REQUEST_ID, sanitize
from darkbloom.protocol import MalformedFrame, UnknownFrame, decode, encode
from darkbloom.protocol.frames import (
    COORDINATOR_FRAME_TYPES,
    MAX_REQUEST_FRAME_BYTES,
    AttestationChallenge,
    AttestationResponse,
    BackendCapacity,
    Cancel,
    Heartbeat,
    InferenceRequest,
    Register,
    Registered,
    RuntimeStatus,
    Stats,
    coordinator_frame_adapter,
)
from darkbloom.provider import attestation, hardware
from darkbloom.provider.benchmark import load_benchmark
from darkbloom.provider.engines.base import Engine
from darkbloom.provider.fingerprint import fingerprint
from darkbloom.provider.outbox import Outbox
from darkbloom.provider.serving import RequestServer

log = logging.getLogger(__name__)

FATAL_CLOSE_CODES = {
    4000: "another provider with this identity key connected and replaced this one: "
          "run one `darkbloom serve` per config directory",
    4001: "provider token rejected: run `darkbloom login` or mint a new token",
    4003: "provider version too old: upgrade darkbloom",
}


class FatalRejection(Exception):
    pass


def redact_url(url: str) -> str:
    """A coordinator URL fit for logs: scheme, host, port and path only (no userinfo or query,
    where a careless operator might have put a secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable coordinator URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class CoordinatorRotation:
    """Which coordinator to dial next, and how long to wait before dialing it.

    Round robin over the URLs in order. The protocol.md §9 backoff (1 s doubling to 5 s) is
    waited once per cycle, i.e. before each pass over the list, not before each URL: a dead
    coordinator never delays reaching a live one, and a network whose coordinators are all down
    is still dialled at most len(urls) times per backoff period. The first cycle starts at once;
    after a session that registered, the backoff is back to its initial value and the next cycle
    starts at the URL after the one that just dropped us (most likely the dead one). With one
    URL this is exactly the single-coordinator behaviour: 0, then 1, 2, 4, 5, 5 s.
    """

    def __init__(self, urls: Sequence[str], initial_s: float, max_s: float) -> None:
        if not urls:
            raise ValueError("no coordinator URL")
        self.urls = list(urls)
        self.initial_s = initial_s
        self.max_s = max_s
        self._index = 0  # the URL of the next attempt
        self._left = 0  # attempts left in the current cycle; 0: the next attempt starts one
        self._backoff = initial_s
        self._started = False

    def next(self) -> tuple[str, float]:
        """The URL to dial now and the seconds to wait first."""
        delay = 0.0
        if self._left == 0:
            if self._started:
                delay = self._backoff
                self._backoff = min(self._backoff * 2, self.max_s)
            self._started = True
            self._left = len(self.urls)
        self._left -= 1
        url = self.urls[self._index]
        self._index = (self._index + 1) % len(self.urls)
        return url, delay

    def registered(self) -> None:
        """The last session registered: back to the initial backoff, and a fresh cycle (from the
        next URL) once it ends."""
        self._backoff = self.initial_s
        self._left = 0
        self._started = True


@dataclass
class _InFlight:
    task: asyncio.Task[None]
    cancel: threading.Event = field(default_factory=threading.Event)
    model: str = ""  # the served model's id
    budget: int = 0  # its output cap: the heartbeat's max_tokens_potential


class ProviderAgent:
    def __init__(self, settings: ProviderSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        # Held in memory only, a fresh key per process (protocol.md §6).
        self.keys = KeyPair.generate()
        # Persistent across restarts, so trust and reputation follow the machine (trust.md §9).
        self.identity = IdentityKey.load_or_create(settings.config_dir / "identity.pem")
        # What it runs, for the coordinator's runtime manifest (hashed once, at start).
        self.fingerprint = fingerprint()
        self.registered: Registered | None = None
        self._ws: ClientConnection | None = None
        self._outbox: Outbox | None = None  # the session's frames to the coordinator, in order
        self._in_flight: dict[str, _InFlight] = {}
        self.server = RequestServer(engine, self.keys, self._send, self.identity)
        self.connected = asyncio.Event()
        self._last_model: str | None = None  # the heartbeat's active_model

    async def _send(self, frame: BaseModel) -> None:
        """Queue a frame for this session's writer (dropped when there is no session)."""
        if self._outbox is not None:
            await self._outbox.put(frame)

    def _register_frame(self) -> Register:
        # The token travels in the upgrade's Authorization header only (protocol.md §2).
        machine = hardware.detect()
        return Register(
            hardware=machine,
            attestation=attestation.build(self.identity, self.keys.public_b64, machine, self.engine.name),
            certificate_chain=attestation.load_chain(self.settings.config_dir),
            models=self.engine.models(),
            backend=self.engine.name,
            version=__version__,
            public_key=self.keys.public_b64,
            encrypted_response_chunks=True,
            max_concurrency=self.engine.slots,
            **self._speeds(),
            python_hash=self.fingerprint.python_hash,
            runtime_hash=self.fingerprint.runtime_hash,
            template_hashes=getattr(self.engine, "template_hashes", None),
        )

    def _speeds(self) -> dict[str, float]:
        """`darkbloom benchmark`'s figures for a served model, which routing starts from (the
        coordinator caps figures it has not measured itself)."""
        saved = load_benchmark(self.settings.config_dir)
        for model in self.engine.models():
            if saved and (figures := saved["models"].get(model.id)):
                return {"decode_tps": figures["decode_tps"], "prefill_tps": figures["prefill_tps"]}
        return {}

    def _heartbeat_frame(self) -> Heartbeat:
        warm = self.engine.warm_models()
        slots = self.engine.capacity()
        for slot in slots:
            slot.max_tokens_potential = sum(e.budget for e in self._in_flight.values()
                                            if e.model == slot.model)
        return Heartbeat(
            status="serving" if self._in_flight else "idle",
            active_model=self._last_model if self._last_model in warm else (warm[0] if warm else None),
            warm_models=warm,
            stats=Stats(requests_served=self.server.requests_served,
                        tokens_generated=self.server.tokens_generated),
            system_metrics=hardware.metrics(),
            backend_capacity=BackendCapacity(slots=slots),
            progress=self.server.progress.snapshot(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Hold one coordinator session at a time (two would each count this provider's slots),
        failing over round robin. A FatalRejection from any coordinator stops the agent: the
        coordinators of one network share one database, so a token or version one refuses,
        every one refuses, and cycling would only hide the misconfiguration."""
        urls = self.settings.coordinators
        rotation = CoordinatorRotation(urls, self.settings.reconnect_initial_s,
                                       self.settings.reconnect_max_s)
        if len(urls) > 1:
            log.info("coordinators, in failover order: %s", ", ".join(map(redact_url, urls)))
        while not stop.is_set():
            url, delay = rotation.next()
            if delay > 0:
                log.debug("next coordinator in %.1f s", delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                if stop.is_set():
                    break
            log.debug("connecting to coordinator %s", redact_url(url))
            try:
                await self._session(stop, url)
            except FatalRejection as exc:
                log.error("%s (coordinator %s)", exc, redact_url(url))
                raise
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                log.warning("coordinator %s: connection failed or lost (%s)", redact_url(url),
                            type(exc).__name__)
            finally:
                self._abort_all()
            if self.registered is not None:  # the last session registered: start over at 1 s
                rotation.registered()
                self.registered = None

    async def _session(self, stop: asyncio.Event, url: str | None = None) -> None:
        headers = {}
        if self.settings.token is not None:
            headers["Authorization"] = f"Bearer {self.settings.token.get_secret_value()}"
        async with websockets.connect(
            url or self.settings.coordinators[0], additional_headers=headers,
            max_size=MAX_REQUEST_FRAME_BYTES,  # an audio upload's request is the largest frame
            ping_interval=self.settings.ping_interval_s, ping_timeout=self.settings.ping_timeout_s,
            open_timeout=10,
            # No permessage-deflate: chunks are sealed (random bytes in base64, which deflate
            # barely shrinks), and zlib on every frame cost both processes CPU on each token.
            compression=None,
        ) as ws:
            log.info("connected to coordinator %s", redact_url(url or self.settings.coordinators[0]))
            self._ws = ws
            self._outbox = Outbox(ws, lambda: bool(self.registered and self.registered.frame_batches))
            try:
                await ws.send(encode(self._register_frame()))
                reader = asyncio.create_task(self._read(ws))
                beats = asyncio.create_task(self._heartbeats(ws))
                writer = asyncio.create_task(self._outbox.run())
                stopper = asyncio.create_task(stop.wait())
                done, pending = await asyncio.wait({reader, beats, writer, stopper},
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if stopper in done:
                    await ws.close(1000, "provider shutting down")
                    return
                for task in done:
                    task.result()
            finally:
                self._ws = None
                self._outbox = None
                self.connected.clear()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                try:
                    frame = decode(message, coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)
                except MalformedFrame as exc:
                    log.warning("closing connection: %s", exc.reason)
                    await ws.close(exc.close_code, exc.reason[:120])
                    return
                if isinstance(frame, UnknownFrame):
                    log.warning("ignoring unknown frame type %r", frame.type)
                elif isinstance(frame, Registered):
                    self.registered = frame
                    self.connected.set()
                    log.info("registered as %s; models %s", frame.provider_id,
                             ", ".join(frame.accepted_models) or "none")
                    for rejected in frame.rejected_models:
                        log.warning("model %s rejected: %s", rejected.id, rejected.reason)
                    if not frame.routable:
                        log.warning("the coordinator will not route to this provider: %s",
                                    frame.reason[:200] or "no reason given")
                elif isinstance(frame, InferenceRequest):
                    self._start(frame)
                elif isinstance(frame, AttestationChallenge):
                    if (answer := self._answer(frame)) is not None:
                        await self._send(answer)
                elif isinstance(frame, RuntimeStatus):
                    for mismatch in frame.mismatches:
                        log.warning("%s is not on the coordinator's runtime manifest (this machine "
                                    "runs %s); install a release the network lists",
                                    mismatch.component, mismatch.got or "nothing")
                elif isinstance(frame, Cancel):
                    entry = self._in_flight.get(frame.request_id)
                    if entry is None:
                        log.debug("cancel for unknown request")
                    else:
                        entry.cancel.set()
                else:
                    log.debug("ignoring %s frame", frame.type)
        except websockets.ConnectionClosed:
            pass
        code = ws.close_code
        if code in FATAL_CLOSE_CODES:
            raise FatalRejection(f"coordinator closed the connection ({code}): "
                                 f"{FATAL_CLOSE_CODES[code]}")
        log.warning("coordinator closed the connection (%s %s)", code, ws.close_reason or "")

    def _answer(self, challenge: AttestationChallenge) -> AttestationResponse | None:
        """Sign the nonce and the current posture (trust.md §4, §9), but only for a fresh
        32-byte nonce: the key never signs text a coordinator chose (no signing oracle)."""
        if (problem := challenge_problem(challenge.nonce, challenge.timestamp)) is not None:
            log.warning("not answering a malformed challenge: %s", problem)
            return None
        now = attestation.posture()
        fields = {"platform": now["platform"], "core_dumps_disabled": now["coreDumpsDisabled"],
                  "ptrace_scope": now["ptraceScope"], "kernel_lockdown": now["kernelLockdown"],
                  "secure_boot_enabled": now["secureBootEnabled"]}
        return AttestationResponse(
            nonce=challenge.nonce, public_key=self.keys.public_b64,
            signature=self.identity.sign(challenge_bytes(challenge.nonce, challenge.timestamp)),
            status_signature=self.identity.sign(status_bytes(challenge.nonce, challenge.timestamp,
                                                             fields)),
            **fields)

    def _start(self, frame: InferenceRequest) -> None:
        cancel = threading.Event()
        context = contextvars.copy_context()  # the request's log lines carry its X-Request-ID
        context.run(REQUEST_ID.set, sanitize(frame.x_request_id))
        context.run(log.debug, "request %s: %s on %s", frame.request_id, frame.endpoint, frame.model)
        self._last_model = frame.model
        task = asyncio.create_task(self.server.serve(frame, cancel), context=context)
        served = self.engine.model_info(frame.model)
        self._in_flight[frame.request_id] = _InFlight(task, cancel, served.id if served else "",
                                                      frame.max_tokens_cap)
        task.add_done_callback(lambda _: self._in_flight.pop(frame.request_id, None))

    def _abort_all(self) -> None:
        for entry in list(self._in_flight.values()):
            entry.cancel.set()
            entry.task.cancel()

    async def _heartbeats(self, ws: ClientConnection) -> None:
        """One heartbeat as soon as the coordinator acknowledges the registration (routing reads
        health and slot state from it), then one per interval the coordinator asked for."""
        await self.connected.wait()
        while True:
            await ws.send(encode(self._heartbeat_frame()))
            interval = (self.registered.heartbeat_interval_s if self.registered
                        else self.settings.heartbeat_interval_s)
            await asyncio.sleep(interval)
