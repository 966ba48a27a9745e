"""Challenge-response (trust.md §4): a fresh nonce every interval, signed back with the identity
key together with the current posture. A wrong, missing, late or replayed answer is a strike;
three in a row, or a posture regression at once, make the provider untrusted (never routed
again on this connection).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.crypto.challenge import challenge_bytes, status_bytes
from darkbloom.crypto.signing import verify
from darkbloom.protocol.frames import AttestationChallenge, AttestationResponse, TrustUpdate

log = logging.getLogger(__name__)

POSTURE_FIELDS = ("platform", "core_dumps_disabled", "ptrace_scope", "kernel_lockdown",
                  "secure_boot_enabled")


@dataclass
class ChallengeState:
    strikes: int = 0
    passed: int = 0
    failed: int = 0
    last_pass: float | None = None
    posture: dict[str, object] = field(default_factory=dict)
    pending: tuple[str, str] | None = None  # (nonce, timestamp) awaiting its answer
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    verdict: str | None = None  # why the last answer failed, or None when it passed


def regression(before: dict[str, object], now: dict[str, object]) -> str | None:
    """A weaker posture than the provider reported earlier on this connection."""
    if before.get("core_dumps_disabled") is True and now.get("core_dumps_disabled") is False:
        return "core dumps were re-enabled"
    old, new = before.get("ptrace_scope"), now.get("ptrace_scope")
    if isinstance(old, int) and isinstance(new, int) and new < old:
        return "ptrace restrictions were lowered (debugging enabled)"
    return None


class Challenger:
    def __init__(self, conn: ProviderConn, interval_s: float, timeout_s: float, max_strikes: int,
                 registered_posture: dict[str, object],
                 recheck_chain: Callable[[], str | None] | None = None) -> None:
        self.recheck_chain = recheck_chain
        self.conn = conn
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_strikes = max_strikes
        self.state = ChallengeState(posture=dict(registered_posture))

    async def run(self) -> None:
        while not self.conn.closed and not self.conn.untrusted:
            await self._challenge_once()
            await asyncio.sleep(self.interval_s)

    async def _challenge_once(self) -> None:
        state = self.state
        nonce = base64.b64encode(os.urandom(32)).decode("ascii")
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state.pending, state.verdict = (nonce, stamp), None
        state.answered.clear()
        self.conn.send(AttestationChallenge(nonce=nonce, timestamp=stamp))
        try:
            await asyncio.wait_for(state.answered.wait(), self.timeout_s)
        except TimeoutError:
            state.verdict = "no answer in time"
        state.pending = None
        if state.verdict is None:
            state.strikes, state.last_pass = 0, time.monotonic()
            state.passed += 1
            self.conn.strikes = 0
            self._recheck_hardware()
            return
        self._strike()
        log.warning("provider %s failed a challenge (%s); strike %d", self.conn.id, state.verdict,
                    state.strikes)
        if state.strikes >= self.max_strikes:
            self.untrust(f"{state.strikes} failed challenges in a row")

    def answer(self, frame: AttestationResponse) -> None:
        """Check an answer against the one outstanding challenge; anything else is a replay."""
        state = self.state
        if state.pending is None or frame.nonce != state.pending[0]:
            self._strike()
            log.warning("provider %s sent an answer to no outstanding challenge (replay or stale)",
                        self.conn.id)
            if state.strikes >= self.max_strikes:
                self.untrust(f"{state.strikes} failed challenges in a row")
            return
        nonce, stamp = state.pending
        posture = {name: getattr(frame, name) for name in POSTURE_FIELDS}
        key = self.conn.identity_key or ""
        if frame.public_key != self.conn.public_key_b64:
            state.verdict = "answer names another encryption key"
        elif not verify(key, challenge_bytes(nonce, stamp), frame.signature):
            state.verdict = "challenge signature does not verify"
        elif not frame.status_signature or not verify(
                key, status_bytes(nonce, stamp, posture), frame.status_signature):
            state.verdict = "status signature missing or invalid"
        elif (reason := regression(state.posture, posture)) is not None:
            state.verdict = reason
            state.answered.set()
            self.untrust(f"posture regression: {reason}")
            return
        else:
            state.posture = {**state.posture, **{k: v for k, v in posture.items() if v is not None}}
        state.answered.set()

    def _recheck_hardware(self) -> None:
        """trust.md §9: certificate expiry is re-checked at every challenge."""
        if self.conn.trust_level != "hardware" or self.recheck_chain is None:
            return
        reason = self.recheck_chain()
        if reason is not None:
            self.conn.trust_level = "self_signed"
            log.warning("provider %s drops to self_signed: %s", self.conn.id, reason)
            self.conn.send(TrustUpdate(trust_level="self_signed", routable=True, reason=reason))

    def _strike(self) -> None:
        """A failure makes the provider unroutable at once, until its next pass."""
        self.state.strikes += 1
        self.state.failed += 1
        self.conn.strikes = self.state.strikes

    def untrust(self, reason: str) -> None:
        if self.conn.untrusted:
            return
        self.conn.untrusted = True
        log.warning("provider %s is now untrusted: %s", self.conn.id, reason)
        self.conn.send(TrustUpdate(trust_level=self.conn.trust_level, routable=False, reason=reason))
