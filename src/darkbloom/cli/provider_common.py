"""What the provider operator commands share: settings with flag overrides, the coordinator's
HTTP address, the local model store, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console

from darkbloom.config import ProviderSettings

if TYPE_CHECKING:
    from darkbloom.provider.model_store import ModelStore

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
# The most of a catalog answer read (a coordinator is trusted for content, not for size).
MAX_CATALOG_BYTES = 4 * 2**20
PID_FILE = "provider.pid"
TOKEN_FILE = "token"


def fail(message: str, code: int = 1) -> NoReturn:
    """One red line on stderr saying what went wrong and what to do; never a traceback."""
    err_console.print(message, style="red", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def provider_settings(coordinator: list[str] | None = None, **overrides: Any) -> ProviderSettings:
    """The provider's settings (config file, DARKBLOOM_PROVIDER_*), with flags on top."""
    from pydantic import ValidationError

    values = {key: value for key, value in overrides.items() if value is not None}
    if coordinator:
        values["coordinator_urls"] = coordinator
    try:
        return ProviderSettings(**values)
    except ValidationError as exc:  # only the messages: the input may hold a token or a URL secret
        error = exc.errors()[0]
        fail(f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}", 2)


def http_base(ws_url: str) -> str:
    """The coordinator's HTTP(S) origin from its provider WebSocket URL (ws→http, wss→https)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((scheme, netloc, "", "", ""))


def models_dir(settings: ProviderSettings) -> Path:
    """Where downloaded models live: the configured directory, else <config_dir>/models."""
    from darkbloom.provider.model_store import default_models_dir

    configured = getattr(settings, "models_dir", None)
    return Path(configured) if configured else default_models_dir(settings.config_dir)


def model_store(settings: ProviderSettings) -> ModelStore:
    from darkbloom.provider.model_store import ModelStore

    return ModelStore(models_dir(settings))


def account_linked(settings: ProviderSettings) -> bool:
    """A provider token is set (DARKBLOOM_PROVIDER_TOKEN, config) or saved by `darkbloom login`."""
    return settings.token is not None or (settings.config_dir / TOKEN_FILE).is_file()


def fetch_catalog(settings: ProviderSettings, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """GET /v1/models/catalog from the first coordinator; raises OSError with a short reason."""
    import httpx

    url = f"{http_base(settings.coordinators[0])}/v1/models/catalog"
    try:
        with httpx.stream("GET", url, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise OSError(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CATALOG_BYTES:
                    raise OSError("the catalog is too large")
    except httpx.HTTPError as exc:
        raise OSError("cannot connect" if isinstance(exc, httpx.ConnectError)
                      else "timed out" if isinstance(exc, httpx.TimeoutException)
                      else type(exc).__name__) from None
    try:
        models = json.loads(body).get("models")
    except (ValueError, AttributeError):
        models = None
    if not isinstance(models, list):
        raise OSError("the answer is not a model catalog")
    return [row for row in models if isinstance(row, dict) and isinstance(row.get("id"), str)]


def daemon_pid(config_dir: Path) -> int | None:
    """The running provider daemon's pid from <config_dir>/provider.pid; None when there is no
    pidfile, or it names a process that is gone or is not darkbloom (a stale pid, reused)."""
    import psutil

    try:
        with (config_dir / PID_FILE).open("rb") as f:
            text = f.read(4096).decode("utf-8", "replace").strip()
    except OSError:
        return None
    pid: object = None
    if text.split() and text.split()[0].isdigit():
        pid = int(text.split()[0])
    else:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        pid = data.get("pid") if isinstance(data, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**22 or pid == os.getpid():
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid if "darkbloom" in " ".join(process.cmdline()) else None
    except psutil.AccessDenied:  # another user's process: alive, cannot say more
        return pid
    except psutil.Error:
        return None
