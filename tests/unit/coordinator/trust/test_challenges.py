"""Challenge bookkeeping without sockets: answers, strikes, replays, regressions, expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.trust.challenges import Challenger, posture_violation, regression
from darkbloom.crypto.challenge import challenge_bytes, status_bytes
from darkbloom.crypto.signing import IdentityKey
from darkbloom.protocol.frames import AttestationResponse

POSTURE = {"platform": "linux", "core_dumps_disabled": True, "ptrace_scope": 1,
           "kernel_lockdown": "none", "secure_boot_enabled": False}


def _setup(make_provider: Callable[..., ProviderConn]) -> tuple[ProviderConn, IdentityKey, Challenger]:
    conn = make_provider()
    identity = IdentityKey.generate()
    conn.identity_key, conn.trust_level = identity.public_b64, "self_signed"
    return conn, identity, Challenger(conn, 60, 1, 3, {"core_dumps_disabled": True})


def _answer(conn: ProviderConn, identity: IdentityKey, nonce: str, stamp: str,
            **posture: object) -> AttestationResponse:
    fields = {**POSTURE, **posture}
    return AttestationResponse(nonce=nonce, public_key=conn.public_key_b64,
                               signature=identity.sign(challenge_bytes(nonce, stamp)),
                               status_signature=identity.sign(status_bytes(nonce, stamp, fields)),
                               **fields)  # type: ignore[arg-type]


def test_good_answer_passes_and_replay_strikes(make_provider: Callable[..., ProviderConn]) -> None:
    conn, identity, challenger = _setup(make_provider)
    challenger.state.pending = ("n1", "2026-01-01T00:00:00Z")
    good = _answer(conn, identity, "n1", "2026-01-01T00:00:00Z")
    challenger.answer(good)
    assert challenger.state.verdict is None and challenger.state.answered.is_set()
    challenger.state.pending = None
    challenger.answer(good)  # the same answer again: no outstanding challenge
    assert conn.strikes == 1 and not conn.untrusted


def test_bad_signatures_and_keys(make_provider: Callable[..., ProviderConn]) -> None:
    conn, identity, challenger = _setup(make_provider)
    stamp = "2026-01-01T00:00:00Z"
    cases = [
        (_answer(conn, IdentityKey.generate(), "n", stamp), "challenge signature does not verify"),
        (_answer(conn, identity, "n", stamp).model_copy(update={"public_key": "x"}),
         "answer names another encryption key"),
        (_answer(conn, identity, "n", stamp).model_copy(update={"status_signature": None}),
         "status signature missing or invalid"),
        (_answer(conn, identity, "n", stamp).model_copy(update={"ptrace_scope": 3}),
         "status signature missing or invalid"),  # posture changed after signing
    ]
    for frame, verdict in cases:
        challenger.state.pending = ("n", stamp)
        challenger.answer(frame)
        assert challenger.state.verdict == verdict


def test_posture_regression_untrusts_at_once(make_provider: Callable[..., ProviderConn]) -> None:
    conn, identity, challenger = _setup(make_provider)
    challenger.state.pending = ("n", "t")
    challenger.answer(_answer(conn, identity, "n", "t", core_dumps_disabled=False))
    assert conn.untrusted
    update = json.loads(conn.outbox.get_nowait())
    assert update["type"] == "trust_update" and update["routable"] is False
    assert regression({"ptrace_scope": 2}, {"ptrace_scope": 0}) is not None
    assert regression({"ptrace_scope": 1}, {"ptrace_scope": 3}) is None


def test_expired_chain_drops_hardware_to_self_signed(make_provider: Callable[..., ProviderConn]) -> None:
    conn = make_provider()
    conn.trust_level = "hardware"
    challenger = Challenger(conn, 60, 1, 3, {}, recheck_chain=lambda: "a certificate expired")
    challenger._recheck_hardware()
    assert conn.trust_level == "self_signed" and not conn.untrusted
    assert json.loads(conn.outbox.get_nowait())["trust_level"] == "self_signed"


async def _round(challenger: Challenger, conn: ProviderConn,
                 answer: Callable[[str, str], AttestationResponse | None]) -> None:
    """One full challenge: read it from the outbox, answer it (or not), let it conclude."""
    task = asyncio.create_task(challenger._challenge_once())
    await asyncio.sleep(0)
    challenge = json.loads(conn.outbox.get_nowait())
    frame = answer(challenge["nonce"], challenge["timestamp"])
    if frame is not None:
        challenger.answer(frame)
    await task


async def test_passes_set_last_pass_and_strikes_erase_it(make_provider: Callable[..., ProviderConn]) -> None:
    conn, identity, _ = _setup(make_provider)
    passes: list[bool] = []
    untrusts: list[tuple[str, bool]] = []
    challenger = Challenger(conn, 60, 0.05, 3, {}, on_pass=passes.append,
                            on_untrust=lambda reason, proven: untrusts.append((reason, proven)))
    assert conn.last_pass is None
    await _round(challenger, conn, lambda n, t: _answer(conn, identity, n, t))
    await _round(challenger, conn, lambda n, t: _answer(conn, identity, n, t))
    assert passes == [True, False] and conn.last_pass is not None
    await _round(challenger, conn, lambda n, t: None)  # no answer in time
    assert conn.last_pass is None and conn.strikes == 1
    for _ in range(2):
        await _round(challenger, conn, lambda n, t: None)
    # Three strikes after a pass: the key's holder failed, so the untrust is proven.
    assert conn.untrusted and untrusts == [("3 failed challenges in a row", True)]


async def test_strikes_before_any_pass_prove_nothing(make_provider: Callable[..., ProviderConn]) -> None:
    conn, _, _ = _setup(make_provider)
    untrusts: list[tuple[str, bool]] = []
    challenger = Challenger(conn, 60, 0.05, 3, {},
                            on_untrust=lambda reason, proven: untrusts.append((reason, proven)))
    impostor = IdentityKey.generate()  # replays a public blob: cannot sign with the key
    for _ in range(3):
        await _round(challenger, conn, lambda n, t: _answer(conn, impostor, n, t))
    assert conn.untrusted and conn.last_pass is None
    assert untrusts == [("3 failed challenges in a row", False)]


async def test_require_posture_breach_in_an_answer_is_a_proven_untrust(
        make_provider: Callable[..., ProviderConn]) -> None:
    conn, identity, _ = _setup(make_provider)
    untrusts: list[tuple[str, bool]] = []
    challenger = Challenger(conn, 60, 0.5, 3, {}, require_posture={"ptrace_scope": 2},
                            on_untrust=lambda reason, proven: untrusts.append((reason, proven)))
    await _round(challenger, conn, lambda n, t: _answer(conn, identity, n, t, ptrace_scope=1))
    assert conn.untrusted and conn.last_pass is None
    assert untrusts == [("require_posture: ptrace_scope is '1', 2 required", True)]


def test_posture_violation_rules() -> None:
    required = {"core_dumps_disabled": True, "ptrace_scope": 1, "kernel_lockdown": "integrity"}
    assert posture_violation(required, {"core_dumps_disabled": True, "ptrace_scope": 3,
                                        "kernel_lockdown": "confidentiality"}) is None
    assert posture_violation(required, {"core_dumps_disabled": False, "ptrace_scope": 3,
                                        "kernel_lockdown": "integrity"}) is not None
    assert posture_violation(required, {"core_dumps_disabled": True, "ptrace_scope": 0,
                                        "kernel_lockdown": "integrity"}) is not None
    assert posture_violation(required, {"core_dumps_disabled": True, "ptrace_scope": 1,
                                        "kernel_lockdown": "none"}) is not None
    # A missing field breaks the rule in an answer; a blob carries only some fields.
    assert posture_violation(required, {"core_dumps_disabled": True}) == \
        "require_posture: kernel_lockdown not reported"
    assert posture_violation(required, {"core_dumps_disabled": True}, partial=True) is None
    assert posture_violation({}, {}) is None
