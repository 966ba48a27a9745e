"""WS /ws/provider: authenticate, take `register`, then pump frames until the socket ends.

Bad input closes only this connection, with a reason (protocol.md §2 close codes); the
coordinator keeps serving everyone else.

Trust lifecycle (trust.md §4, docs/decisions.md): an attested provider is routed only after it
passes a challenge on this connection; one that passes replaces (4000) every other session of
the same identity key; a proven untrust quarantines the key; a revoked token closes (4001).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, WebSocket
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State
from starlette.websockets import WebSocketDisconnect, WebSocketState

from darkbloom import semver
from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.cluster.link import Link
from darkbloom.coordinator.dispatch import Dispatcher
from darkbloom.coordinator.routing import clamps
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.store.credentials import (
    TokenIdentity,
    find_provider_token,
    revoked_provider_tokens,
    touch_provider_token,
)
from darkbloom.coordinator.trust.attestation import at_least, verify_blob
from darkbloom.coordinator.trust.challenges import Challenger, mark_untrusted, posture_violation
from darkbloom.coordinator.trust.quarantine import Quarantine
from darkbloom.crypto import SealingError, public_key_from_b64
from darkbloom.crypto.certificates import check_chain
from darkbloom.crypto.challenge import TIMESTAMP_FORMAT, now_stamp
from darkbloom.inference.capabilities import CAPABILITIES
from darkbloom.inference.catalog import Catalog
from darkbloom.protocol import MalformedFrame, UnknownFrame, decode, encode
from darkbloom.protocol.frames import (
    CLOSE_BAD_TOKEN,
    CLOSE_EVICTED,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ORDER,
    CLOSE_REPLACED,
    CLOSE_VERSION_TOO_OLD,
    PROVIDER_FRAME_TYPES,
    AttestationResponse,
    FrameBatch,
    Hardware,
    Heartbeat,
    ModelInfo,
    Register,
    Registered,
    RejectedModel,
    RuntimeStatus,
    provider_frame_adapter,
)

log = logging.getLogger(__name__)
router = APIRouter()


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


# A stated slot count is believed up to here: above the memory tier's 12 and the llama.cpp
# engine's default of 8, and low enough that a provider that accepts and stalls holds little.
MAX_SLOTS = 16


def concurrency_cap(register: Register) -> int:
    """The slots a provider says its engine has (issue 14: a batching engine allocated their
    memory when it loaded, so the count is real); without one, protocol.md §7's guess from
    memory: 4 without capacity data, else the memory tier (docs/decisions.md)."""
    if register.max_concurrency is not None:
        return max(1, min(MAX_SLOTS, register.max_concurrency))  # (issue 14)
    memory = register.hardware.memory_gb
    return 4 if memory <= 0 else 2 if memory <= 24 else 4 if memory <= 48 else 6 if memory <= 96 \
        else 8 if memory <= 128 else 12


def _header_safe(text: str) -> str:
    """Provider-reported text ends up in response headers: printable ASCII, bounded length."""
    return "".join(c for c in text if " " <= c <= "~")[:128]


def _hardware_text(hardware: Hardware) -> dict[str, str]:
    """Every text field of ``hardware`` through ``_header_safe``: all of it is the provider's to
    choose, kept for the session and shown in headers and listings (/v1/me/providers)."""
    return {name: _header_safe(value) for name, value in hardware if isinstance(value, str)}


def filter_models(catalog: Catalog, offered: list[ModelInfo]
                  ) -> tuple[frozenset[str], list[RejectedModel]]:
    accepted: set[str] = set()
    rejected: list[RejectedModel] = []
    for info in offered:
        entry = catalog.resolve(info.id)
        if entry is None:
            rejected.append(RejectedModel(id=info.id[:256], reason="not in the catalog"))
        elif info.weight_hash != entry.weight_hash:
            rejected.append(RejectedModel(id=info.id[:256],
                                          reason="weight hash does not match the catalog"))
        else:
            accepted.add(entry.id)
    return frozenset(accepted), rejected


def per_model(catalog: Catalog, offered: list[ModelInfo], accepted: frozenset[str], cap: int
              ) -> tuple[dict[str, int], dict[str, frozenset[str]]]:
    """Each accepted model's own slots (at most the provider's cap) and capabilities (names this
    network knows; unknown ones are dropped). A model that says neither gets neither: the
    provider's cap and every capability, as before providers said them."""
    slots: dict[str, int] = {}
    capable: dict[str, frozenset[str]] = {}
    for info in offered:
        entry = catalog.resolve(info.id)
        if entry is None or entry.id not in accepted:
            continue
        if info.slots is not None:
            slots[entry.id] = max(1, min(cap, info.slots))
        if info.capabilities is not None:
            capable[entry.id] = CAPABILITIES.intersection(info.capabilities[:64])
    return slots, capable


class ProviderSession:
    def __init__(self, ws: WebSocket, settings: CoordinatorSettings, catalog: Catalog,
                 scheduler: Scheduler, dispatcher: Dispatcher) -> None:
        self.ws = ws
        self.settings = settings
        self.catalog = catalog
        self.scheduler = scheduler
        self.dispatcher = dispatcher
        self.quarantine: Quarantine = ws.app.state.quarantine
        # Several coordinators (coordinator/cluster/link.py): None when this one stands alone.
        self.link: Link | None = getattr(ws.app.state, "link", None)
        self.challenger: Challenger | None = None
        self._kicked: asyncio.Task[None] | None = None
        self._proven: asyncio.Task[None] | None = None

    async def _receive_text(self) -> str:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            raise MalformedFrame("binary frames are not part of the protocol")
        return str(text)

    async def _authenticate(self, register: Register) -> TokenIdentity | None:
        header = self.ws.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        token = token or (register.auth_token or "")
        if token:
            found = await find_provider_token(self.ws.app.state.sessions, token)
            if found is None:
                raise _Close(CLOSE_BAD_TOKEN, "provider token invalid or revoked")
            try:  # for GET /v1/me/providers' "never_seen"; registering does not depend on it
                await touch_provider_token(self.ws.app.state.sessions, found.token_id)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("could not note a provider token's use (%s)", type(exc).__name__)
            return found
        if not self.settings.allow_anonymous_providers:
            raise _Close(CLOSE_BAD_TOKEN, "provider token required")
        return None

    async def run(self) -> None:
        await self.ws.accept()
        conn: ProviderConn | None = None
        writer: asyncio.Task[None] | None = None
        challenges: asyncio.Task[None] | None = None
        try:
            try:
                first = decode(
                    await asyncio.wait_for(self._receive_text(), self.settings.register_timeout_s),
                    provider_frame_adapter, PROVIDER_FRAME_TYPES)
            except TimeoutError:
                raise _Close(CLOSE_PROTOCOL_ORDER, "register not received within "
                             f"{self.settings.register_timeout_s:g} s") from None
            if not isinstance(first, Register):
                raise _Close(CLOSE_PROTOCOL_ORDER, "first frame must be register")
            conn = await self._register(first)
            await self.scheduler.reputations.attach(conn)
            writer = asyncio.create_task(self._write(conn))
            if self.challenger is not None:  # the first challenge goes out at once (trust.md §4)
                challenges = asyncio.create_task(self.challenger.run())
            self.scheduler.add(conn)
            if self.link is not None:
                self.link.publish(conn, joined=True)
            log.info("provider %s registered: %s, %d slot(s)", conn.id,
                     ", ".join(sorted(conn.models)) or "no models", conn.max_concurrency)
            await self._pump(conn)
        except _Close as close:
            log.warning("closing provider connection: %s (%d)", close.reason, close.code)
            await self._close(close.code, close.reason)
        except MalformedFrame as bad:
            log.warning("closing provider connection: %s", bad.reason)
            await self._close(bad.close_code, bad.reason)
        except WebSocketDisconnect:
            pass
        finally:
            if conn is not None:
                self.scheduler.remove(conn)
                self.dispatcher.provider_lost(conn)
                if self.link is not None:
                    self.link.left(conn)
                self.scheduler.reputations.detach(conn)
                log.info("provider %s disconnected", conn.id)
            for task in (writer, challenges):
                if task is not None:
                    task.cancel()

    async def _register(self, register: Register) -> ProviderConn:
        token = await self._authenticate(register)
        try:
            public_key = public_key_from_b64(register.public_key)
        except SealingError:
            raise _Close(CLOSE_PROTOCOL_ORDER, "register.public_key is not a 32-byte X25519 key") \
                from None
        if not register.encrypted_response_chunks:
            raise _Close(CLOSE_PROTOCOL_ORDER, "encrypted_response_chunks must be true")
        models, rejected = filter_models(self.catalog, register.models)
        verdict = verify_blob(register.attestation, register.public_key)
        if verdict.reason:
            log.warning("provider attestation not accepted: %s", verdict.reason)
        elif register.certificate_chain is not None and verdict.identity_key:
            refused = check_chain(register.certificate_chain, verdict.identity_key, verdict.serial,
                                  self.ws.app.state.root_cas)
            if refused is None:
                verdict = replace(verdict, level="hardware")
            else:
                log.warning("provider certificate chain not accepted: %s", refused)
        if token is not None:
            self._check_sessions(token.token_id, verdict.identity_key)
        if self.settings.min_provider_version and semver.older(register.version[:64],
                                                               self.settings.min_provider_version):
            raise _Close(CLOSE_VERSION_TOO_OLD, f"provider version {register.version[:32]!r} is "
                         f"below this network's minimum {self.settings.min_provider_version}; "
                         "upgrade darkbloom")
        hardware = register.hardware.model_copy(update={
            **_hardware_text(register.hardware),
            "memory_gb": int(clamps.clamp(register.hardware.memory_gb, clamps.MAX_MEMORY_GB)),
            "memory_bandwidth_gbs": clamps.clamp(register.hardware.memory_bandwidth_gbs, 2_000.0)})
        conn = ProviderConn(
            id=str(uuid.uuid4()), account_id=token.account_id if token else None, models=models,
            public_key=public_key, token_id=token.token_id if token else None,
            public_key_b64=register.public_key, max_concurrency=concurrency_cap(register),
            hardware=hardware, backend=register.backend[:64],
            version=register.version[:32], trust_level=verdict.level,
            identity_key=verdict.identity_key, serial=_header_safe(verdict.serial or "") or None,
            attestation_raw=verdict.raw_b64, attestation_signature=verdict.signature,
            certificate_chain=register.certificate_chain if verdict.level == "hardware" else None,
            reported_decode_tps=clamps.clamp(register.decode_tps or 0.0, clamps.MAX_DECODE_TPS),
            reported_prefill_tps=clamps.clamp(register.prefill_tps or 0.0, clamps.MAX_PREFILL_TPS),
        )
        conn.model_slots, conn.model_capabilities = per_model(
            self.catalog, register.models, models, conn.max_concurrency)
        conn.kick = lambda code, reason: self._kick(conn, code, reason)
        settings = self.settings
        barred = self._barred(conn, verdict.posture or {})
        if barred:
            conn.untrusted = True
            log.warning("provider %s registered unroutable: %s", conn.id, barred)
        elif verdict.identity_key:
            key, serial, chain = verdict.identity_key, verdict.serial, register.certificate_chain
            roots = self.ws.app.state.root_cas
            self.challenger = Challenger(
                conn, settings.challenge_interval_s, settings.challenge_timeout_s,
                settings.challenge_max_strikes, verdict.posture or {},
                recheck_chain=lambda: check_chain(chain, key, serial, roots),
                require_posture=settings.require_posture,
                on_pass=lambda first: self._passed(conn, first),
                on_fail=lambda: self._failed_challenge(conn),
                on_untrust=lambda reason, proven: self._untrusted(conn, reason, proven))
        reason = barred
        mismatches = settings.runtime_manifest.mismatches(register)
        if mismatches:  # a wrong build, not a lie: connected, never routed, told why (§3)
            conn.runtime_mismatch = ", ".join(m.component for m in mismatches)
            log.warning("provider %s registered unroutable: runtime not on the manifest (%s)",
                        conn.id, conn.runtime_mismatch)
        if not reason and mismatches:
            reason = (f"{conn.runtime_mismatch} not on the coordinator's runtime manifest "
                      "(GET /v1/runtime/manifest)")
        elif not reason and not models:
            reason = "no offered model was accepted"
        elif not reason and not at_least(verdict.level, settings.min_trust_level):
            reason = f"trust level {verdict.level} is below the network minimum {settings.min_trust_level}"
        await self.ws.send_text(encode(Registered(
            provider_id=conn.id, trust_level=verdict.level, routable=not reason, reason=reason,
            frame_batches=True,
            accepted_models=sorted(models), rejected_models=rejected,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            challenge_interval_s=max(1, round(settings.challenge_interval_s)),
            server_time=now_stamp(),
        )))
        if mismatches:
            await self.ws.send_text(encode(RuntimeStatus(verified=False, mismatches=mismatches)))
        if (metrics := getattr(self.ws.app.state, "metrics", None)) is not None:
            metrics.registered(conn)  # provider_registrations/reconnects_total (coordinator/metrics.py)
        return conn

    def _check_sessions(self, token_id: str, identity_key: str | None) -> None:
        """One token may not hold more than ``max_sessions_per_token`` sessions here: a leaked or
        hostile token could otherwise open sessions until memory runs out. A session of the same
        identity key does not count: this one replaces it (4000)."""
        held = sum(1 for p in self.scheduler.providers.values()
                   if p.home is None and p.token_id == token_id
                   and (identity_key is None or p.identity_key != identity_key))
        if held >= self.settings.max_sessions_per_token:
            raise _Close(CLOSE_POLICY, f"this provider token already holds {held} sessions on this "
                         "coordinator (DARKBLOOM_MAX_SESSIONS_PER_TOKEN)")

    def _barred(self, conn: ProviderConn, blob_posture: dict[str, object]) -> str:
        """Why this session may never be routed from the start: its key (or serial) is in
        quarantine, or its signed blob already breaks ``require_posture`` (which quarantines it)."""
        if conn.identity_key is None:
            return ""
        entry = self.quarantine.check(conn.identity_key, conn.serial)
        if entry is not None:
            return (f"quarantined until {entry.until.strftime(TIMESTAMP_FORMAT)}: "
                    f"{entry.reason}")
        violation = posture_violation(self.settings.require_posture, blob_posture, partial=True)
        if violation is not None:
            self._quarantine(conn, violation)
            return violation
        return ""

    def _failed_challenge(self, conn: ProviderConn) -> None:
        self.scheduler.reputations.of(conn).challenged(False)
        self._publish(conn)  # unroutable until its next pass, on every coordinator

    def _publish(self, conn: ProviderConn) -> None:
        if self.link is not None:
            self.link.publish(conn)

    def _passed(self, conn: ProviderConn, first: bool) -> None:
        """A pass makes the session routable; the first one also proves the identity key, so
        any other session of that key is replaced (protocol.md §5 "Duplicates"). Unless the key
        went into quarantine after this session's own check at registration (while it was still
        registering, its other sessions' untrust could not see it): then it is never routed."""
        self.scheduler.reputations.of(conn).challenged(True)
        entry = self.quarantine.check(conn.identity_key, conn.serial)
        if entry is not None:
            mark_untrusted(conn, f"identity key quarantined: {entry.reason}")
            return
        if first and conn.identity_key is not None:
            for other in self.scheduler.sessions_of(conn.identity_key):
                if other is not conn and other.kick is not None:
                    other.kick(CLOSE_REPLACED, "replaced by a newer connection with the same "
                                               "identity key")
                elif other is not conn and self.link is not None:
                    self.link.close_elsewhere(other, CLOSE_REPLACED, "replaced by a newer "
                                              "connection with the same identity key")
                    self.link.resync()  # stop routing to the old copy at once
        if first and self.link is not None:
            # Other coordinators pay it by the account its proven identity has in the database:
            # write that first, then tell them it is routable.
            self._proven = asyncio.create_task(self._announce(conn))
        else:
            self._publish(conn)
        self.scheduler.drain()

    async def _announce(self, conn: ProviderConn) -> None:
        await self.scheduler.reputations.flush()
        if self.link is not None:
            self.link.publish(conn, joined=True)

    def _untrusted(self, conn: ProviderConn, reason: str, proven: bool) -> None:
        self._publish(conn)
        if proven:
            self._quarantine(conn, reason)

    def _quarantine(self, conn: ProviderConn, reason: str) -> None:
        """Bar the key for ``quarantine_s``; its other live sessions go unroutable with it. The
        serial is barred only when a certificate vouched for it: a self-reported serial could
        name someone else's machine."""
        assert conn.identity_key is not None
        entry = self.quarantine.add(conn.identity_key,
                                    conn.serial if conn.trust_level == "hardware" else None, reason)
        for other in self.scheduler.sessions_of(conn.identity_key):
            if other is not conn:
                mark_untrusted(other, f"identity key quarantined: {entry.reason}")
                self._publish(other)
                if other.home is not None and self.link is not None:
                    self.link.close_elsewhere(other, CLOSE_EVICTED,
                                              f"identity key quarantined: {entry.reason}")

    def _kick(self, conn: ProviderConn, code: int, reason: str) -> None:
        """Close this session from outside its own loop; its requests fail over at once."""
        if self._kicked is not None:
            return
        log.warning("closing provider %s: %s (%d)", conn.id, reason, code)
        self.scheduler.remove(conn)
        self.dispatcher.provider_lost(conn)
        if self.link is not None:
            self.link.left(conn)
        self._kicked = asyncio.create_task(self._close(code, reason))

    async def _write(self, conn: ProviderConn) -> None:
        while True:
            text = await conn.outbox.get()
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                conn.closed = True
                return

    async def _pump(self, conn: ProviderConn) -> None:
        loop = asyncio.get_running_loop()
        silence = self.settings.heartbeat_timeout_s
        try:
            # One timer for the whole session, pushed back before each wait (not a task and a
            # timer per frame, as asyncio.wait_for makes: this loop runs once per token).
            async with asyncio.timeout(silence) as waiting:
                while True:
                    waiting.reschedule(loop.time() + silence)
                    text = await self._receive_text()
                    waiting.reschedule(None)
                    await self._frame(conn, text)
        except TimeoutError:
            raise _Close(CLOSE_EVICTED, "no heartbeat") from None

    async def _frame(self, conn: ProviderConn, text: str) -> None:
        frame = decode(text, provider_frame_adapter, PROVIDER_FRAME_TYPES)
        if isinstance(frame, UnknownFrame):
            log.warning("provider %s sent unknown frame type %r; ignored", conn.id, frame.type)
        elif isinstance(frame, Heartbeat):
            self._heartbeat(conn, frame)
        elif isinstance(frame, Register):
            raise _Close(CLOSE_PROTOCOL_ORDER, "duplicate register")
        elif isinstance(frame, AttestationResponse):
            if self.challenger is None:
                log.warning("provider %s answered a challenge it was never sent", conn.id)
            else:
                self.challenger.answer(frame)
        elif isinstance(frame, FrameBatch):
            for each in frame.frames:  # as if each had come alone, in order
                if self.link is None or not await self.link.carried(conn, each, encode(each)):
                    self.dispatcher.handle(conn, each)
        elif self.link is None or not await self.link.carried(conn, frame, text):
            self.dispatcher.handle(conn, frame)

    def _heartbeat(self, conn: ProviderConn, frame: Heartbeat) -> None:
        """protocol.md §4 heartbeat: keep the clamped report for routing, add the counts and the
        time since the last one to the provider's record, and retry the queues (§7)."""
        now = time.monotonic()
        gap, conn.last_heartbeat = now - conn.last_heartbeat, now

        def resolve(name: str) -> str | None:
            model = self.catalog.resolve(name)
            return model.id if model else None

        conn.heartbeat = clamps.heartbeat(frame, conn.models, resolve)
        if frame.progress:
            self.dispatcher.progress(conn, [(job.request_id, job.unit, job.done)
                                            for job in frame.progress])
        self.scheduler.reputations.of(conn).heartbeat(conn.heartbeat.stats, gap,
                                                      self.settings.heartbeat_interval_s)
        self._publish(conn)
        self.scheduler.drain()

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self.ws.close(code, reason[:120])


async def watch_revoked_tokens(scheduler: Scheduler, sessions: async_sessionmaker[AsyncSession],
                               every_s: float) -> None:
    """Close the live sockets of revoked provider tokens (the CLI writes straight to the
    database, so the coordinator polls it)."""
    while True:
        await asyncio.sleep(every_s)
        live = {p.token_id for p in scheduler.providers.values() if p.token_id}
        try:
            revoked = await revoked_provider_tokens(sessions, live)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not check for revoked provider tokens (%s)", type(exc).__name__)
            continue
        for conn in [p for p in scheduler.providers.values() if p.token_id in revoked]:
            if conn.kick is not None:
                conn.kick(CLOSE_BAD_TOKEN, "provider token revoked")


@contextlib.asynccontextmanager
async def provider_watch(state: State) -> AsyncIterator[None]:
    """Load the quarantine before any provider registers; poll revoked tokens while serving."""
    settings: CoordinatorSettings = state.settings
    state.quarantine = Quarantine(state.sessions, settings.quarantine_s)
    await state.quarantine.load()
    watcher = asyncio.create_task(watch_revoked_tokens(state.scheduler, state.sessions,
                                                       settings.provider_token_poll_s))
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await state.quarantine.flush()


@router.websocket("/ws/provider")
async def provider_socket(ws: WebSocket) -> None:
    state = ws.app.state
    await ProviderSession(ws, state.settings, state.catalog, state.scheduler,
                          state.dispatcher).run()
