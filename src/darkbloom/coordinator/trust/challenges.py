"""Challenge-response (trust.md §4): a fresh nonce every interval, signed back with the identity
key together with the current posture. A wrong, missing, late or replayed answer is a strike;
three in a row, a posture regression or a breach of ``require_posture`` make the provider
untrusted (never routed again on this connection). The untrust is *proven* when it rests on
something the identity key itself signed, or on failures after a passed challenge; only a proven
one quarantines the key, so replaying someone's public attestation cannot get them quarantined.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.crypto.challenge import challenge_bytes, new_nonce, now_stamp, status_bytes
from darkbloom.crypto.signing import verify
from darkbloom.protocol.frames import AttestationChallenge, AttestationResponse, TrustUpdate

log = logging.getLogger(__name__)

POSTURE_FIELDS = ("platform", "core_dumps_disabled", "ptrace_scope", "kernel_lockdown",
                  "secure_boot_enabled")
LOCKDOWN = ("none", "integrity", "confidentiality")


@dataclass
class ChallengeState:
    strikes: int = 0
    passed: int = 0
    failed: int = 0
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


def posture_violation(required: Mapping[str, object], reported: Mapping[str, object],
                      partial: bool = False) -> str | None:
    """The first ``require_posture`` rule the report breaks (trust.md §9); a field missing from
    the report breaks it too, unless ``partial`` (a registration blob carries only some fields)."""
    for name, want in sorted(required.items()):
        have = reported.get(name)
        if have is None:
            if partial:
                continue
            return f"require_posture: {name} not reported"
        if name == "ptrace_scope":
            ok = isinstance(have, int) and isinstance(want, int) and have >= want
        elif name == "kernel_lockdown":
            ok = have in LOCKDOWN and LOCKDOWN.index(str(have)) >= LOCKDOWN.index(str(want))
        else:
            ok = have == want
        if not ok:
            return f"require_posture: {name} is {str(have)[:32]!r}, {want!r} required"
    return None


def mark_untrusted(conn: ProviderConn, reason: str) -> bool:
    """Never route ``conn`` again and tell the provider why; False if it already was."""
    if conn.untrusted:
        return False
    conn.untrusted = True
    log.warning("provider %s is now untrusted: %s", conn.id, reason)
    conn.send(TrustUpdate(trust_level=conn.trust_level, routable=False, reason=reason))
    return True


class Challenger:
    """``on_pass(first)`` runs after each pass, ``on_fail()`` after each strike and
    ``on_untrust(reason, proven)`` after an untrust."""

    def __init__(self, conn: ProviderConn, interval_s: float, timeout_s: float, max_strikes: int,
                 registered_posture: dict[str, object],
                 recheck_chain: Callable[[], str | None] | None = None,
                 require_posture: Mapping[str, object] | None = None,
                 on_pass: Callable[[bool], None] | None = None,
                 on_fail: Callable[[], None] | None = None,
                 on_untrust: Callable[[str, bool], None] | None = None) -> None:
        self.recheck_chain = recheck_chain
        self.conn = conn
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_strikes = max_strikes
        self.require_posture = dict(require_posture or {})
        self.on_pass = on_pass
        self.on_fail = on_fail
        self.on_untrust = on_untrust
        self.state = ChallengeState(posture=dict(registered_posture))

    async def run(self) -> None:
        while not self.conn.closed and not self.conn.untrusted:
            await self._challenge_once()
            await asyncio.sleep(self.interval_s)

    async def _challenge_once(self) -> None:
        state = self.state
        nonce, stamp = new_nonce(), now_stamp()
        state.pending, state.verdict = (nonce, stamp), None
        state.answered.clear()
        self.conn.send(AttestationChallenge(nonce=nonce, timestamp=stamp))
        try:
            await asyncio.wait_for(state.answered.wait(), self.timeout_s)
        except TimeoutError:
            state.verdict = "no answer in time"
        state.pending = None
        if self.conn.untrusted:  # the answer itself untrusted it (posture)
            return
        if state.verdict is None:
            state.strikes = 0
            state.passed += 1
            self.conn.strikes, self.conn.last_pass = 0, time.monotonic()
            self._recheck_hardware()
            if self.on_pass is not None:
                self.on_pass(state.passed == 1)
            return
        self._strike()
        log.warning("provider %s failed a challenge (%s); strike %d", self.conn.id, state.verdict,
                    state.strikes)
        self._untrust_after_strikes()

    def answer(self, frame: AttestationResponse) -> None:
        """Check an answer against the one outstanding challenge; anything else is a replay."""
        state = self.state
        if state.pending is None or frame.nonce != state.pending[0]:
            self._strike()
            log.warning("provider %s sent an answer to no outstanding challenge (replay or stale)",
                        self.conn.id)
            self._untrust_after_strikes()
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
            self.untrust(f"posture regression: {reason}", proven=True)
            return
        elif (reason := posture_violation(self.require_posture, posture)) is not None:
            state.verdict = reason
            state.answered.set()
            self.untrust(reason, proven=True)
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
        self.conn.strikes, self.conn.last_pass = self.state.strikes, None
        if self.on_fail is not None:
            self.on_fail()

    def _untrust_after_strikes(self) -> None:
        if self.state.strikes >= self.max_strikes:
            # Failures from a connection that never proved the key say nothing about its holder.
            self.untrust(f"{self.state.strikes} failed challenges in a row",
                         proven=self.state.passed > 0)

    def untrust(self, reason: str, proven: bool = False) -> None:
        if mark_untrusted(self.conn, reason) and self.on_untrust is not None:
            self.on_untrust(reason, proven)
