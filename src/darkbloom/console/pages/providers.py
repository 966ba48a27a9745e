"""Provider dashboard (console.md): an operator's machines, earnings, payouts, linked devices and
the setup guide.

The machines are exactly what GET /v1/me/providers answers (``operators.listing``), the figures
what /v1/me/summary and /v1/provider/account-earnings read; this module only adds the words a
person needs (what is wrong with a machine, what to do next). Actions (withdraw, revoke a token,
Stripe onboarding) are the page script calling the public API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.config import CoordinatorSettings
from darkbloom.console.render import page, signed_in, to_sign_in
from darkbloom.coordinator.api.billing import configured as stripe_configured
from darkbloom.coordinator.api.operators import listing
from darkbloom.coordinator.payments import MIN_WITHDRAW_MICRO_USD
from darkbloom.coordinator.store import ledger, operators
from darkbloom.coordinator.store import stripe as stripe_store
from darkbloom.coordinator.store.credentials import list_account_provider_tokens
from darkbloom.coordinator.store.usage import earnings

router = APIRouter()
RECENT_EARNINGS = 20  # rows of the recent-earnings table
RECENT_PAYOUTS = 10
LISTED_TOKENS = 100  # linked devices shown; the API pages through the rest
HOT_THERMAL = ("serious", "critical")


@dataclass
class MachineView:
    """One row of "My machines": the listing's entry plus what it means for its operator."""

    entry: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cold: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        key = str(self.entry["provider_key"])
        if key.startswith("token:"):
            return "unattested machine (token " + key.removeprefix("token:")[:12] + ")"
        return "attested key " + key[:16] + ("…" if len(key) > 16 else "")

    @property
    def status_kind(self) -> str:
        status = self.entry["status"]
        return "ok" if status in ("online", "serving") else "bad" if status == "untrusted" else "warn" \
            if status == "never_seen" else ""


def _parse(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def when(stamp: str | datetime | None) -> str:
    """A time as people read it on this page (UTC, to the second), from an RFC 3339 string or a
    stored datetime; a dash when there is none."""
    found = _parse(stamp) if isinstance(stamp, str) else stamp
    if found is None:
        return "—"
    if found.tzinfo is not None:
        found = found.astimezone(UTC)
    return found.strftime("%Y-%m-%d %H:%M:%S UTC")


def jobs(count: int) -> str:
    return f"{count:,} job" + ("" if count == 1 else "s")


def machine_view(entry: dict[str, Any], challenge_max_age_s: float, now: datetime) -> MachineView:
    """Say what keeps a machine from earning (console.md: stale attestation, thermal, cold
    model), besides the coordinator's own ``attention`` list."""
    view = MachineView(entry, warnings=[str(a) for a in entry.get("attention") or []])
    if entry["status"] == "never_seen":
        view.notes.append("linked, but no machine has connected with this token yet: run "
                          "`darkbloom start` on it")
        return view
    if not entry["online"]:
        return view
    passed = _parse(entry.get("last_challenge_verified"))
    if passed is not None and (now - passed).total_seconds() > challenge_max_age_s:
        view.warnings.append(f"stale attestation: its last passed challenge is older than "
                             f"{int(challenge_max_age_s)} s, so requests are not routed to it")
    elif passed is None and entry.get("failed_challenges") is not None:
        view.notes.append("no challenge passed yet (the first comes soon after it connects)")
    thermal = (entry.get("system_metrics") or {}).get("thermal_state")
    if thermal in HOT_THERMAL:
        view.warnings.append(f"thermal state {thermal}: the machine is throttling; cool it or "
                             "lower its load")
    pressure = (entry.get("system_metrics") or {}).get("memory_pressure") or 0
    if pressure >= 0.9:
        view.warnings.append(f"memory pressure {round(pressure * 100)}%")
    warm = set(entry.get("warm_models") or [])
    view.cold = {model for model in entry.get("models") or [] if model not in warm}
    if view.cold:
        view.notes.append("cold model(s) " + ", ".join(sorted(view.cold)) + ": unloaded while "
                          "idle; the next request waits for the reload")
    return view


def provider_ws_url(base_url: str) -> str:
    """The URL providers dial (``--coordinator``) for this console's own address."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/provider", "", ""))


async def _payouts(request: Request, account_id: str) -> dict[str, Any]:
    """Stripe Connect as this page shows it: off, not set up, pending, or ready to withdraw."""
    if not stripe_configured(request):
        return {"configured": False}
    sessions = request.app.state.sessions
    connect = await stripe_store.get_connect(sessions, account_id)
    return {"configured": True, "connect": connect,
            "ready": connect is not None and connect.status == "ready",
            "withdrawals": await stripe_store.list_withdrawals(sessions, account_id, RECENT_PAYOUTS),
            "min_withdraw_micro_usd": MIN_WITHDRAW_MICRO_USD}


@router.get("/providers")
async def providers_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    state = request.app.state
    settings: CoordinatorSettings = state.settings
    sessions = state.sessions
    account_id = identity.account_id
    now = datetime.now(UTC)
    found = await listing(request, account_id)
    machines = [machine_view(entry, settings.pass_window_s, now) for entry in found.providers]
    held = await ledger.balance(sessions, account_id)
    earned = await operators.earned_since(sessions, account_id, operators.windows(now))
    recent = await earnings(sessions, account_id, RECENT_EARNINGS)
    tokens = await list_account_provider_tokens(sessions, account_id, LISTED_TOKENS)
    base = str(request.base_url).rstrip("/")
    return page(request, "providers.html", identity, "Providers",
                machines=machines, truncated=found.truncated, counts=found.counts(),
                balance=held, earned=earned, recent=recent,
                per_job=recent.total_micro_usd // recent.count if recent.count else 0,
                payouts=await _payouts(request, account_id),
                tokens=tokens.tokens if tokens else [],
                tokens_truncated=bool(tokens and tokens.truncated),
                ws_url=provider_ws_url(base), when=when, jobs=jobs)
