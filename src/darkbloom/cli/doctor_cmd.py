"""`darkbloom doctor`: numbered checks, each with a fix when it fails (provider.md "Commands")."""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Annotated

import typer

from darkbloom.cli import provider_flags
from darkbloom.cli.provider_common import (
    account_linked,
    console,
    http_base,
    model_store,
    provider_settings,
)
from darkbloom.config import ProviderSettings

MAX_CLOCK_SKEW_S = 60.0
MIN_FREE_DISK_BYTES = 2 * 10**9
HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Health:
    """GET /health, asked once: the reachability and the clock checks both read it."""

    status: int | None = None
    date: str | None = None
    error: str = ""
    asked_at: float = 0.0
    answered_at: float = 0.0


def _health(settings: ProviderSettings, clock: Callable[[], float]) -> Health:
    import httpx

    result = Health(asked_at=clock())
    try:
        response = httpx.get(f"{http_base(settings.coordinators[0])}/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.TimeoutException:
        result.error = f"no answer within {HEALTH_TIMEOUT_S:.0f} s"
    except httpx.HTTPError as exc:
        result.error = "cannot connect" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
    else:
        result.status, result.date = response.status_code, response.headers.get("date")
    result.answered_at = clock()
    return result


def check_hardware() -> Check:
    from darkbloom.provider.hardware import detect

    try:
        hw = detect()
    except Exception as exc:  # psutil or /proc unreadable: the check reports it, doctor goes on
        return Check("Hardware detected", False, type(exc).__name__,
                     "make /proc readable to this user (psutil needs it)")
    gpu = f", {hw.gpu_name}" if hw.gpu_name else ""
    return Check("Hardware detected", hw.memory_gb > 0,
                 f"{hw.chip_name}, {hw.cpu_cores.total} cores, {hw.memory_gb} GB RAM{gpu}",
                 "psutil reports no memory: check that /proc is mounted")


def check_engine() -> Check:
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or a broken native library (OSError)
        return Check("Engine importable", False, f"llama_cpp: {type(exc).__name__}",
                     "pip install llama-cpp-python (scripts/bootstrap.sh builds it)")
    return Check("Engine importable", True, f"llama.cpp {getattr(llama_cpp, '__version__', '')}".strip())


def check_models(settings: ProviderSettings) -> Check:
    installed = model_store(settings).installed()
    if not installed:
        return Check("At least one model present", False, "no model found",
                     "darkbloom models download --model <id> (see `darkbloom models list`)")
    return Check("At least one model present", True, ", ".join(m.id for m in installed[:8]))


def check_identity(settings: ProviderSettings) -> Check:
    from darkbloom.crypto.signing import IdentityKey

    path = settings.config_dir / "identity.pem"
    try:
        identity = IdentityKey.load_or_create(path)
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, ValueError) as exc:
        return Check("Identity key usable", False, f"{path}: {getattr(exc, 'strerror', None) or exc}",
                     f"move {path} away (a new key is made at the next start; the coordinator "
                     "sees a new provider)")
    if mode & 0o077:
        return Check("Identity key usable", False, f"{path} is readable by others ({mode:o})",
                     f"chmod 600 {path}")
    return Check("Identity key usable", True, f"key id {identity.key_id}")


def check_coordinator(settings: ProviderSettings, health: Health) -> Check:
    from darkbloom.provider.agent import redact_url

    where = http_base(redact_url(settings.coordinators[0]))
    if health.status == 200:
        return Check("Coordinator reachable", True, f"{where}/health answered")
    if health.status is not None:
        return Check("Coordinator reachable", False, f"{where}/health answered HTTP {health.status}",
                     "the coordinator runs but is unhealthy: ask its operator (its database may "
                     "be down)")
    return Check("Coordinator reachable", False, f"{where}: {health.error}",
                 "check the network, or set the coordinator with --coordinator / "
                 "DARKBLOOM_PROVIDER_COORDINATOR_URL")


def check_account(settings: ProviderSettings) -> Check:
    if account_linked(settings):
        return Check("Account linked", True, "provider token present")
    return Check("Account linked", False, "no provider token",
                 "darkbloom login (links this machine to the account it earns for)")


def check_clock(health: Health, clock: Callable[[], float]) -> Check:
    """The coordinator's Date header against this clock, allowing for the round trip."""
    if health.date is None:
        return Check("Clock in sync", False, "cannot compare: the coordinator did not answer",
                     "reach the coordinator first (see above)")
    try:
        theirs = parsedate_to_datetime(health.date).timestamp()
    except (TypeError, ValueError):
        return Check("Clock in sync", False, "the coordinator's Date header is unreadable",
                     "ask the coordinator's operator")
    mine = (health.asked_at + health.answered_at) / 2
    skew = mine - theirs
    # Date has whole seconds and the answer came at some point of the round trip.
    slack = 1.0 + (health.answered_at - health.asked_at) / 2
    if abs(skew) > MAX_CLOCK_SKEW_S + slack:
        return Check("Clock in sync", False,
                     f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the coordinator",
                     "turn on time sync (timedatectl set-ntp true; on macOS: Date & Time settings)")
    return Check("Clock in sync", True, f"within {max(abs(skew), 1):.0f} s of the coordinator")


def check_disk(settings: ProviderSettings) -> Check:
    from darkbloom.cli.provider_common import models_dir

    where = models_dir(settings)
    probe = next((p for p in (where, *where.parents) if p.exists()), where)
    free = shutil.disk_usage(probe).free
    detail = f"{free / 1e9:.1f} GB free at {probe}"
    if free < MIN_FREE_DISK_BYTES:
        return Check("Disk space", False, detail,
                     f"free at least {MIN_FREE_DISK_BYTES / 1e9:.0f} GB for model downloads")
    return Check("Disk space", True, detail)


def run_checks(settings: ProviderSettings, clock: Callable[[], float] = time.time) -> list[Check]:
    health = _health(settings, clock)
    return [check_hardware(), check_engine(), check_models(settings), check_identity(settings),
            check_coordinator(settings, health), check_account(settings), check_clock(health, clock),
            check_disk(settings)]


def doctor(
    coordinator: Annotated[list[str] | None, typer.Option(
        "--coordinator", help="ws(s)://host/ws/provider to check (default: the configured one).")
    ] = None,
) -> None:
    """Check that this machine can serve, with a fix for each failed check.

    Checks hardware, engine, models, identity key, coordinator, account, clock, disk.

    Exits 1 when any check fails.

    Example: darkbloom doctor --coordinator wss://coordinator.example.com/ws/provider
    """
    checks = run_checks(provider_settings(provider_flags.flags(coordinator)))
    for number, check in enumerate(checks, start=1):
        mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
        console.print(f"{number:>2}. {mark} {check.name}: ", end="")
        console.print(check.detail, markup=False, soft_wrap=True)
        if not check.ok:
            console.print(f"      fix: {check.fix}", markup=False, soft_wrap=True)
    passed = sum(check.ok for check in checks)
    console.print(f"Result: {passed}/{len(checks)} checks passed")
    raise typer.Exit(0 if passed == len(checks) else 1)
