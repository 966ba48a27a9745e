"""What the provider operator commands share: settings with flag overrides, the coordinator's
HTTP address, the local model store, and one-line errors."""

from __future__ import annotations

import json
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


def fail(message: str, code: int = 1) -> NoReturn:
    """One red line on stderr saying what went wrong and what to do; never a traceback."""
    err_console.print(message, style="red", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def printable(text: str, width: int | None = None) -> str:
    """``text`` (its first ``width`` characters) without control characters: what the coordinator
    or a catalog sends is shown, never interpreted by the terminal (escape sequences)."""
    return "".join(ch for ch in text[:width] if ch.isprintable())


def provider_settings(flags: dict[str, Any] | None = None) -> ProviderSettings:
    """ProviderSettings as a command with these flags ({field: value}, unset flags left out) runs
    with; a bad file, variable or flag is one red line on stderr and exit 2, never a traceback
    (only the messages: the input may hold a token or a URL secret)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from darkbloom.provider.config_files import ProviderConfigError
    from darkbloom.provider.provenance import env_parse_error, settings_error

    flags = flags or {}
    try:
        return ProviderSettings(**flags)
    except ProviderConfigError as exc:
        fail(str(exc), 2)
    except SettingsError as exc:
        fail(env_parse_error(exc), 2)
    except ValidationError as exc:
        fail(settings_error(exc, flags), 2)


def http_base(url: str) -> str:
    """The coordinator's HTTP address from its provider URL: ws→http, wss→https, a trailing
    `/ws/provider` dropped (a coordinator may live under a path), as are any user:password and
    query; an http(s) URL is taken as it is. ValueError if it is not a coordinator URL."""
    try:
        parts = urlsplit(url.strip())
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise ValueError(f"{url!r} is not a coordinator URL") from None
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    host = parts.hostname or ""
    if scheme is None or not host:
        raise ValueError(f"{url!r} is not a coordinator URL: give ws(s)://host/ws/provider or "
                         "http(s)://host")
    path = parts.path.rstrip("/")
    if path.endswith("/ws/provider"):
        path = path[: -len("/ws/provider")]
    return urlunsplit((scheme, f"[{host}]{port}" if ":" in host else f"{host}{port}", path, "", ""))


def models_dir(settings: ProviderSettings) -> Path:
    """Where downloaded models live: <config_dir>/models."""
    from darkbloom.provider.model_store import default_models_dir

    return default_models_dir(settings.config_dir)


def model_store(settings: ProviderSettings) -> ModelStore:
    from darkbloom.provider.model_store import ModelStore

    return ModelStore(models_dir(settings))


def account_linked(settings: ProviderSettings) -> bool:
    """A provider token is configured (`darkbloom login` saved one, or the environment gives one)."""
    return settings.token is not None


def fetch_catalog(settings: ProviderSettings, timeout_s: float = 5.0,
                  deadline_s: float = 30.0) -> list[dict[str, Any]]:
    """GET /v1/models/catalog from the first coordinator, within ``deadline_s`` in all (give or
    take one read timeout: a server trickling bytes never trips the per-read one); raises OSError
    with a short reason."""
    import time

    import httpx

    url = f"{http_base(settings.coordinators[0])}/v1/models/catalog"
    deadline = time.monotonic() + deadline_s
    try:
        with httpx.stream("GET", url, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise OSError(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CATALOG_BYTES:
                    raise OSError("the catalog is too large")
                if time.monotonic() > deadline:
                    raise OSError(f"no whole catalog within {deadline_s:g} s")
    except httpx.HTTPError as exc:
        raise OSError("cannot connect" if isinstance(exc, httpx.ConnectError)
                      else "timed out" if isinstance(exc, httpx.TimeoutException)
                      else type(exc).__name__) from None
    try:
        models = json.loads(body).get("models")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: deeply nested JSON
        models = None
    if not isinstance(models, list):
        raise OSError("the answer is not a model catalog")
    return [row for row in models if isinstance(row, dict) and isinstance(row.get("id"), str)]
