"""An operator's view of its account (api.md §6): GET /v1/me/summary and GET /v1/me/providers.

Everything is what the coordinator really has (docs/device-login.md lists the sources field by
field); what it has no data for is null, false or 0, never an invented figure.

A machine is a live session earning for the account (this coordinator's own, or one mirrored from
another coordinator's presence record, docs/scale-out.md), a stored track record of one
(``provider_reputation``: an attested identity key, or ``token:<id>`` for an unattested machine),
or a provider token no machine has registered with yet (``never_seen``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from darkbloom import __version__
from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api.auth import SessionDep
from darkbloom.coordinator.api.bodies import rfc3339
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.reputation import Record, key_of
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.store import ledger, operators
from darkbloom.coordinator.store import stripe as stripe_store
from darkbloom.coordinator.store.credentials import list_account_provider_tokens
from darkbloom.coordinator.trust.attestation import at_least

router = APIRouter()
MAX_LISTED = 1000  # machines in one answer (live ones first)


def _wall(monotonic_stamp: float) -> datetime:
    return datetime.fromtimestamp(time.time() - (time.monotonic() - monotonic_stamp), UTC)


def _reputation(record: Record | operators.Machine | None) -> dict[str, Any] | None:
    """api.md §6's ``reputation`` object, from this process's live record or the stored row."""
    if record is None:
        return None
    score = record.score() if isinstance(record, Record) else record.score
    return {"score": round(score, 4),
            "total_jobs": record.jobs_succeeded + record.jobs_failed,
            "successful_jobs": record.jobs_succeeded, "failed_jobs": record.jobs_failed,
            "avg_response_time_ms": (record.response_ms_total // record.response_samples
                                     if record.response_samples else None),
            "challenges_passed": record.challenges_passed,
            "challenges_failed": record.challenges_failed,
            "total_uptime_seconds": record.uptime_total_s}


@dataclass
class _Listing:
    providers: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def counts(self) -> dict[str, int]:
        statuses = [p["status"] for p in self.providers]
        return {"total": len(statuses),
                "online": sum(s in ("online", "serving") for s in statuses),
                "serving": statuses.count("serving"),
                "offline": sum(s in ("offline", "never_seen") for s in statuses),
                "untrusted": statuses.count("untrusted"),
                "hardware": sum(p["trust_level"] == "hardware" for p in self.providers),
                "needs_attention": sum(bool(p["attention"]) for p in self.providers)}


def _attention(conn: ProviderConn, scheduler: Scheduler) -> list[str]:
    """What keeps a connected machine from work that its operator can fix."""
    problems = []
    if conn.untrusted:
        problems.append("untrusted: it failed its challenges or its identity key is quarantined")
    if conn.runtime_mismatch:
        problems.append(f"runtime not on the coordinator's manifest ({conn.runtime_mismatch})")
    if not conn.models:
        problems.append("no model it offered was accepted")
    if conn.strikes:
        problems.append(f"{conn.strikes} challenge(s) failed in a row")
    if not at_least(conn.trust_level, scheduler.min_trust):
        problems.append(f"trust level {conn.trust_level} is below this network's minimum "
                        f"{scheduler.min_trust}")
    return problems


def _blank(key: str, account_id: str, status: str) -> dict[str, Any]:
    """A machine not connected here: identity only; what only a live session reports is null."""
    return {"id": key, "provider_key": key, "session_id": None, "account_id": account_id,
            "status": status, "online": False, "routable": False, "attention": [],
            "last_heartbeat": None, "version": None, "backend": None, "serial_number": None,
            "hardware": None, "models": [], "trust_level": None, "attested": False,
            "mda_verified": False, "acme_verified": False, "se_key_bound": False,
            "se_public_key": None, "secure_enclave": False, "sip_enabled": None,
            "secure_boot_enabled": None, "authenticated_root_enabled": None,
            "runtime_verified": None, "last_challenge_verified": None, "failed_challenges": None,
            "system_metrics": None, "backend_capacity": None, "warm_models": [],
            "current_model": None, "pending_requests": 0, "max_concurrency": None,
            "prefill_tps": None, "decode_tps": None, "reputation": None,
            "lifetime_requests_served": None, "lifetime_tokens_generated": None,
            "earnings_total_micro_usd": None, "earnings_count": None,
            "registered_at": None, "last_seen": None}


def _live(conn: ProviderConn, account_id: str, settings: CoordinatorSettings,
          scheduler: Scheduler) -> dict[str, Any]:
    beat = conn.heartbeat
    pending = conn.in_flight + conn.cluster_in_flight
    status = "untrusted" if conn.untrusted else "serving" if pending or beat.status == "serving" \
        else "online"
    own = conn.home is None  # a mirrored session's socket, timers and challenges are its home's
    entry = _blank(key_of(conn), account_id, status)
    entry.update({
        "id": conn.id, "session_id": conn.id, "online": True, "routable": scheduler.routable(conn),
        "attention": _attention(conn, scheduler),
        "last_heartbeat": rfc3339(_wall(conn.last_heartbeat)) if own else None,
        "version": conn.version, "backend": conn.backend, "serial_number": conn.serial,
        "hardware": conn.hardware.model_dump(), "models": sorted(conn.models),
        "trust_level": conn.trust_level, "attested": conn.identity_key is not None,
        "se_public_key": conn.identity_key,
        "runtime_verified": (conn.runtime_mismatch is None) if own and settings.runtime_manifest.configured
        else None,
        "last_challenge_verified": rfc3339(_wall(conn.last_pass)) if own and conn.last_pass else None,
        "failed_challenges": conn.strikes if own else None,
        "system_metrics": beat.system_metrics.model_dump(),
        "backend_capacity": beat.backend_capacity.model_dump() if beat.backend_capacity else None,
        "warm_models": list(beat.warm_models), "current_model": beat.active_model,
        "pending_requests": pending, "max_concurrency": conn.max_concurrency,
        "prefill_tps": round(conn.prefill_tps, 2), "decode_tps": round(conn.decode_tps, 2)})
    return entry


def _stored(entry: dict[str, Any], machine: operators.Machine | None, record: Record | None,
            earned: operators.Earned | None) -> None:
    """Fill the track record: this process's live record where it holds one, else the row."""
    source: Record | operators.Machine | None = record or machine
    entry["reputation"] = _reputation(source)
    if source is not None:
        entry["lifetime_requests_served"] = source.requests_served
        entry["lifetime_tokens_generated"] = source.tokens_generated
    if machine is not None:
        entry["registered_at"] = rfc3339(machine.first_seen)
        entry["last_seen"] = rfc3339(machine.last_seen)
    if record is not None:
        entry["last_seen"] = rfc3339(datetime.fromtimestamp(record.last_seen, UTC))
        if entry["registered_at"] is None:
            entry["registered_at"] = rfc3339(datetime.fromtimestamp(record.first_seen, UTC))
    if entry["decode_tps"] is None and machine is not None and machine.decode_tps > 0:
        entry["decode_tps"] = round(machine.decode_tps, 2)  # measured by the coordinator
    if not entry["provider_key"].startswith(("token:", "session:")):  # an identity key
        entry["earnings_total_micro_usd"] = earned.micro_usd if earned else 0
        entry["earnings_count"] = earned.jobs if earned else 0


def seen_elsewhere_s(settings: CoordinatorSettings) -> float:
    """How recently another coordinator must have written a machine's record for it to count as
    online here (it writes every ``reputation_flush_s`` while heartbeats arrive)."""
    return 2 * settings.reputation_flush_s + settings.heartbeat_interval_s


async def listing(request: Request, account_id: str) -> _Listing:
    state = request.app.state
    settings: CoordinatorSettings = state.settings
    scheduler: Scheduler = state.scheduler
    sessions = state.sessions
    stored = {m.key: m for m in await operators.machines(sessions, account_id)}
    earned = await operators.earned_by_machine(sessions, account_id)
    page = await list_account_provider_tokens(sessions, account_id)
    tokens = page.tokens if page is not None else []
    result = _Listing()
    live = sorted(scheduler.owned_by(account_id), key=lambda c: (c.home is not None, c.id))
    keys_live: set[str] = set()
    tokens_live: set[str] = set()
    for conn in live:
        key = key_of(conn)
        keys_live.add(key)
        if conn.token_id:
            tokens_live.add(conn.token_id)
        entry = _live(conn, account_id, settings, scheduler)
        machine = stored.get(key)
        _stored(entry, machine, scheduler.reputations.peek(conn) if conn.home is None else None,
                earned.get(conn.identity_key or ""))
        if conn.home is not None and machine is not None:
            entry["last_heartbeat"] = rfc3339(machine.last_seen)  # as its home last wrote it
        result.providers.append(entry)
    fresh = datetime.now(UTC) - timedelta(seconds=seen_elsewhere_s(settings))
    for key, machine in stored.items():
        if key in keys_live:
            continue
        # Connected to another coordinator whose record of it this one does not mirror (an
        # unattested machine: its account cannot be proven from presence), going by the row
        # that coordinator keeps writing while the machine's heartbeats arrive.
        elsewhere = state.link is not None and machine.last_seen >= fresh
        entry = _blank(key, account_id, "online" if elsewhere else "offline")
        entry["online"] = elsewhere
        if elsewhere:
            entry["last_heartbeat"] = rfc3339(machine.last_seen)
        entry["attested"] = not key.startswith("token:")
        entry["se_public_key"] = key if entry["attested"] else None
        _stored(entry, machine, None, earned.get(key))
        result.providers.append(entry)
    # Records this process holds and has not written yet (a machine that came and went within
    # reputation_flush_s): the listing does not wait for the flush.
    for record in list(scheduler.reputations.records()):
        if record.account_id != account_id or record.key in keys_live or record.key in stored \
                or record.key.startswith("session:"):
            continue
        entry = _blank(record.key, account_id, "offline")
        entry["attested"] = not record.key.startswith("token:")
        entry["se_public_key"] = record.key if entry["attested"] else None
        _stored(entry, None, record, earned.get(record.key))
        result.providers.append(entry)
    for token in tokens:
        key = f"token:{token.id}"
        if token.last_used_at is None and token.id not in tokens_live and key not in stored:
            entry = _blank(key, account_id, "never_seen")
            entry["registered_at"] = rfc3339(token.created_at)
            result.providers.append(entry)
    if len(result.providers) > MAX_LISTED:
        result.providers, result.truncated = result.providers[:MAX_LISTED], True
    result.truncated = result.truncated or (page is not None and page.truncated)
    return result


def _versions(settings: CoordinatorSettings) -> dict[str, str | None]:
    """The coordinator and the provider ship in one package: the newest provider this
    coordinator knows is its own version."""
    return {"latest_provider_version": __version__,
            "min_provider_version": settings.min_provider_version or None}


@router.get("/v1/me/providers")
async def me_providers(request: Request, identity: SessionDep) -> dict[str, Any]:
    settings: CoordinatorSettings = request.app.state.settings
    found = await listing(request, identity.account_id)
    return {"providers": found.providers, "truncated": found.truncated, **_versions(settings),
            "heartbeat_timeout_seconds": settings.heartbeat_timeout_s,
            "challenge_max_age_seconds": settings.pass_window_s}


@router.get("/v1/me/summary")
async def me_summary(request: Request, identity: SessionDep) -> dict[str, Any]:
    state = request.app.state
    sessions = state.sessions
    held = await ledger.balance(sessions, identity.account_id)
    connect = await stripe_store.get_connect(sessions, identity.account_id)
    earned = await operators.earned_since(sessions, identity.account_id,
                                          operators.windows(datetime.now(UTC)))
    found = await listing(request, identity.account_id)
    return {"account_id": identity.account_id,
            "available_balance_micro_usd": held.balance_micro_usd,
            "withdrawable_balance_micro_usd": held.withdrawable_micro_usd,
            "payout_ready": connect is not None and connect.status == "ready",
            "lifetime_micro_usd": earned["lifetime"].micro_usd, "lifetime_jobs": earned["lifetime"].jobs,
            "last_24h_micro_usd": earned["last_24h"].micro_usd, "last_24h_jobs": earned["last_24h"].jobs,
            "last_7d_micro_usd": earned["last_7d"].micro_usd, "last_7d_jobs": earned["last_7d"].jobs,
            "counts": found.counts(), **_versions(state.settings)}
