"""`darkbloom login`: link this machine to an account with a device code (provider.md, api.md §6,
RFC 8628's shape), and the provider token it yields (`<config_dir>/token`, mode 0600).

Every answer from the coordinator is read with a size cap and checked for shape before use: a
wrong URL (a web server that is not a coordinator) gives one clear line, not a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

TOKEN_FILE = "token"
TOKEN_PREFIX = "darkbloom-pt-"
MAX_ANSWER_BYTES = 1024 * 1024
SLOW_DOWN_STEP_S = 5  # RFC 8628 §3.5: each slow_down adds 5 s to the polling interval
TIMEOUT = httpx.Timeout(10.0)


class LoginError(Exception):
    """One line for the operator, saying what to do."""


def http_base(url: str) -> str:
    """The coordinator's HTTP origin from its provider URL: ws→http, wss→https, the
    `/ws/provider` path dropped (an http(s) URL is taken as it is, less a trailing slash)."""
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise LoginError(f"{url!r} is not a coordinator URL: give ws(s)://host/ws/provider or "
                         "http(s)://host")
    path = parts.path.rstrip("/")
    if path.endswith("/ws/provider"):
        path = path[: -len("/ws/provider")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class Linked:
    token: str
    account_id: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


def call(client: httpx.Client, method: str, url: str, *, json_body: object = None,
         token: str | None = None) -> Answer:
    """One request; the answer read up to MAX_ANSWER_BYTES and parsed as a JSON object (an
    answer that is not one becomes an empty body, so callers go by the status)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.split("/v1/", 1)[0]
    try:
        with client.stream(method, url, json=json_body, headers=headers, timeout=TIMEOUT) as response:
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise LoginError(f"{base} sent an answer over {MAX_ANSWER_BYTES} bytes: is it "
                                     "a darkbloom coordinator?")
            status = response.status_code
    except httpx.HTTPError as exc:
        raise LoginError(f"cannot reach the coordinator at {base} ({type(exc).__name__}): is it "
                         "running, and is the URL right (--coordinator)?") from None
    try:
        body = json.loads(data) if data else {}
    except ValueError:
        body = {}
    return Answer(status, body if isinstance(body, dict) else {})


def _error_message(answer: Answer) -> str:
    error = answer.body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else f"HTTP {answer.status}"
    return "".join(ch for ch in text[:300] if ch.isprintable())


def _bounded_int(value: object, default: int, low: int, high: int) -> int:
    return min(max(value, low), high) if isinstance(value, int) and not isinstance(value, bool) else default


def request_code(client: httpx.Client, base: str) -> DeviceCode:
    answer = call(client, "POST", f"{base}/v1/device/code", json_body={})
    if answer.status == 404:
        raise LoginError(f"{base} has no device-code login (POST /v1/device/code: 404): is it a "
                         "darkbloom coordinator, and up to date?")
    if answer.status != 200:
        raise LoginError(f"the coordinator at {base} refused a device code: {_error_message(answer)}")
    body = answer.body
    device_code, user_code, uri = body.get("device_code"), body.get("user_code"), body.get("verification_uri")
    if not (isinstance(device_code, str) and 0 < len(device_code) <= 256
            and isinstance(user_code, str) and 0 < len(user_code) <= 32 and user_code.isprintable()
            and isinstance(uri, str) and uri.startswith(("http://", "https://")) and len(uri) <= 2048
            and uri.isprintable()):
        raise LoginError(f"{base} did not answer like a darkbloom coordinator (no device code): "
                         "check --coordinator")
    return DeviceCode(device_code, user_code, uri,
                      expires_in=_bounded_int(body.get("expires_in"), 900, 1, 3600),
                      interval=_bounded_int(body.get("interval"), 5, 1, 60))


def poll_token(client: httpx.Client, base: str, code: DeviceCode,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> Linked:
    """Poll every ``interval`` seconds until approved; slow_down adds 5 s (RFC 8628). A
    coordinator that cannot be reached for a moment is polled again until the code expires."""
    interval = code.interval
    deadline = clock() + code.expires_in
    while True:
        sleep(interval)
        if clock() >= deadline:
            raise LoginError("the code expired before it was approved: run `darkbloom login` again")
        try:
            answer = call(client, "POST", f"{base}/v1/device/token",
                          json_body={"device_code": code.device_code})
        except LoginError:
            continue  # a restart or a network blip: the code lives on the coordinator
        status = answer.body.get("status")
        error = answer.body.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        if answer.status == 200 and status == "authorized":
            token, account = answer.body.get("token"), answer.body.get("account_id")
            if not (isinstance(token, str) and token.startswith(TOKEN_PREFIX) and len(token) <= 256
                    and token.isprintable() and isinstance(account, str) and account.isprintable()):
                raise LoginError("the coordinator approved the code but sent no usable token: run "
                                 "`darkbloom login` again")
            return Linked(token, account[:200])
        if answer.status == 200 and status == "authorization_pending":
            continue
        if answer.status == 429 or kind == "slow_down" or status == "slow_down":
            interval += SLOW_DOWN_STEP_S
            continue
        if answer.status == 410:
            raise LoginError("the code expired (or was already used) before this machine got its "
                             "token: run `darkbloom login` again")
        if answer.status == 404:
            raise LoginError("the coordinator no longer knows this code: run `darkbloom login` again")
        if answer.status == 403 or status == "access_denied" or kind == "access_denied":
            raise LoginError("the link request was denied: run `darkbloom login` again to retry")
        if answer.status >= 500:
            continue  # the coordinator's trouble, perhaps passing; the code has a deadline
        raise LoginError(f"the coordinator refused the code ({_error_message(answer)}): run "
                         "`darkbloom login` again")


# --- the provider token on disk ---------------------------------------------------------------
# The config engineer's save_token/forget_token replace these two at merge (same file, same mode).


def store_token(config_dir: Path, token: str) -> None:
    """``<config_dir>/token``: the token and a newline, mode 0600 in a 0700 directory, written
    atomically (a crash leaves the old token or the new one, never half of one)."""
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config_dir, 0o700)
    tmp = config_dir / f".{TOKEN_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, config_dir / TOKEN_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def forget_token(config_dir: Path) -> bool:
    """Remove the stored token; whether there was one."""
    try:
        (config_dir / TOKEN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def stored_token(config_dir: Path) -> str | None:
    try:
        text = (config_dir / TOKEN_FILE).read_text()[:1024].strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text if text.startswith(TOKEN_PREFIX) else None
