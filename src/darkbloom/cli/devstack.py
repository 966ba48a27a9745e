"""`darkbloom up`: coordinator + one local provider for development, state under .darkbloom/."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from darkbloom.cli.process import die_with_parent
from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.store.credentials import (
    create_api_key,
    create_provider_token,
    lookup_api_key,
    lookup_provider_token,
)
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker, upgrade
from darkbloom.coordinator.store.ledger import credit
from darkbloom.inference.catalog import DEFAULT_MODEL

console = Console()
DEV_CONSUMER = "local"  # the account `darkbloom keys create` makes keys for by default
DEV_OPERATOR = "dev-operator"
DEV_CREDIT = 100 * 1_000_000  # $100, once


def _read_secret(path: Path, key: str | None = None) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if key is None:
            return line.strip() or None
        name, _, value = line.partition("=")
        if name == key:
            return value.strip() or None
    return None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass(frozen=True, slots=True)
class DevCredentials:
    api_key: str  # the dev consumer's (account DEV_CONSUMER)
    provider_token: str  # the local provider's, earning for DEV_OPERATOR
    admin_key: str


async def ensure_credentials(settings: CoordinatorSettings) -> DevCredentials:
    """Reuse the dev credentials across restarts; mint them the first time. The consumer gets a
    one-time $100 ``admin_credit``; the provider earns for a separate operator account, so a
    request is charged and earned exactly as on a real network."""
    await upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    dev_env = settings.state_dir / "dev.env"
    try:
        key = _read_secret(dev_env, "DARKBLOOM_API_KEY")
        if key is None or await lookup_api_key(sessions, key) is None:
            key = (await create_api_key(sessions, DEV_CONSUMER, label="make run")).secret
        await credit(sessions, DEV_CONSUMER, DEV_CREDIT, "admin_credit", "make-run:dev-credit",
                     withdrawable=False, actor="make run")  # once: the reference is fixed
        token_file = settings.state_dir / "provider-token"
        token = _read_secret(token_file)
        if token is None or await lookup_provider_token(sessions, token) != DEV_OPERATOR:
            token = (await create_provider_token(sessions, DEV_OPERATOR, label="make run")).secret
            _write_private(token_file, token + "\n")
    finally:
        await engine.dispose()
    admin_key = _read_secret(dev_env, "DARKBLOOM_ADMIN_KEY") or "dba-" + secrets.token_hex(32)
    return DevCredentials(key, token, admin_key)


def _dev_balance(base: str, key: str) -> str:
    try:
        answer = httpx.get(f"{base}/v1/payments/balance", headers={"Authorization": f"Bearer {key}"},
                           timeout=5)
        return f"${answer.json()['balance_usd']}"
    except (httpx.HTTPError, ValueError, KeyError):
        return "(unavailable)"


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "darkbloom", *args], env=env,
                            preexec_fn=die_with_parent)


def _wait_for(url: str, ready: Callable[[httpx.Response], bool],
              procs: list[subprocess.Popen[bytes]], stopping: Callable[[], bool],
              timeout_s: float = 180) -> bool:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline and not stopping():
            if any(p.poll() is not None for p in procs):
                return False
            try:
                if ready(client.get(url)):
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
    return False


def _lists(model: str) -> Callable[[httpx.Response], bool]:
    return lambda r: any(m.get("id") == model for m in r.json().get("data", []))


def run_up(settings: CoordinatorSettings) -> int:
    die_with_parent()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with console.status("Preparing database and credentials..."):
        dev = asyncio.run(ensure_credentials(settings))
    key = dev.api_key
    host, port = settings.host, settings.port
    base = f"http://{host}:{port}"
    # The dev consumer is exempt from rate limits: a test suite hammering the dev stack must not
    # meet 429s (an account signed up on it is limited as on any network).
    exempt = json.dumps(sorted({*settings.rate_limit_exempt_accounts, DEV_CONSUMER}))
    env = {**os.environ, "DARKBLOOM_STATE_DIR": str(settings.state_dir.resolve()),
           "DARKBLOOM_HOST": host, "DARKBLOOM_PORT": str(port), "DARKBLOOM_ADMIN_KEY": dev.admin_key,
           "DARKBLOOM_RATE_LIMIT_EXEMPT_ACCOUNTS": exempt,
           # The console is served here: Checkout returns to it and `darkbloom login` links to it.
           "DARKBLOOM_PUBLIC_URL": os.environ.get("DARKBLOOM_PUBLIC_URL", base),
           # A local scraper (or a curious developer) reads GET /metrics without the admin key.
           "DARKBLOOM_METRICS_PUBLIC": os.environ.get("DARKBLOOM_METRICS_PUBLIC", "true")}
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        # Its own config dir: the dev stack serves the default model whatever this machine's
        # provider.toml says (other models, a schedule window that is closed now).
        provider_env = {**env, "DARKBLOOM_PROVIDER_TOKEN": dev.provider_token,
                        "DARKBLOOM_PROVIDER_COORDINATOR_URL": f"ws://{host}:{port}/ws/provider",
                        "DARKBLOOM_PROVIDER_CONFIG_DIR": str((settings.state_dir / "provider").resolve()),
                        "DARKBLOOM_PROVIDER_MODELS": json.dumps([DEFAULT_MODEL.id])}
        with console.status(f"Starting coordinator and provider ({DEFAULT_MODEL.id})..."):
            procs.append(_spawn(["coordinator"], env))
            ready = _wait_for(f"{base}/health", lambda r: r.status_code == 200, procs,
                              lambda: stopping)
            if ready:
                procs.append(_spawn(["serve"], provider_env))
                ready = _wait_for(f"{base}/v1/models", _lists(DEFAULT_MODEL.id), procs,
                                  lambda: stopping)
        if not ready:
            if stopping:
                return 0
            console.print("[red]darkbloom did not become ready; see the log above[/red]")
            return 1
        _write_private(settings.state_dir / "dev.env",
                       f"DARKBLOOM_BASE_URL={base}/v1\nDARKBLOOM_API_KEY={key}\n"
                       f"DARKBLOOM_ADMIN_KEY={dev.admin_key}\n")
        console.print(f"\n[bold green]darkbloom is up[/bold green]: model [bold]{DEFAULT_MODEL.id}"
                      f"[/bold] is routable\n  console:  {base}/  (sign up there; an admin credits new "
                      f"accounts with `darkbloom admin credit`)\n"
                      f"  base URL: {base}/v1\n  API key:  {key}\n"
                      f"  balance:  {_dev_balance(base, key)} (requests are charged to it and "
                      f"earned by the local provider's operator account)\n"
                      f"  admin key: in {settings.state_dir / 'dev.env'}\n"
                      f"  (all in {settings.state_dir / 'dev.env'}; Ctrl-C stops both)\n")
        while not stopping:
            if any(p.poll() is not None for p in procs):
                console.print("[red]a darkbloom process exited; stopping[/red]")
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
