"""`darkbloom login`: link this machine to an account with a device code (provider.md, api.md §6,
RFC 8628's shape), and the provider token it yields (`<config_dir>/token`, mode 0600).

Every answer from the coordinator is read with a size cap and checked for shape before use: a
wrong URL (a web server that is not a coordinator) gives one clear line, not a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from darkbloom.cli.provider_common import http_base as common_http_base
from darkbloom.provider.config_files import is_token

TOKEN_PREFIX = "darkbloom-pt-"
MAX_ANSWER_BYTES = 1024 * 1024
SLOW_DOWN_STEP_S = 5  # RFC 8628 §3.5: each slow_down adds 5 s to the polling interval
TIMEOUT = httpx.Timeout(10.0)
# The most one exchange may take in all: the per-read timeout alone lets a server that trickles a
# byte every few seconds hold `login` (or `earnings`) forever.
DEADLINE_S = 30.0


class LoginError(Exception):
    """One line for the operator, saying what to do."""


def http_base(url: str) -> str:
    try:
        return common_http_base(url)
    except ValueError as exc:
        raise LoginError(str(exc)) from None


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
         token: str | None = None, deadline_s: float = DEADLINE_S) -> Answer:
    """One request; the answer read up to MAX_ANSWER_BYTES within ``deadline_s`` (give or take
    one read timeout) and parsed as a JSON object (an answer that is not one becomes an empty
    body, so callers go by the status)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.split("/v1/", 1)[0]
    deadline = time.monotonic() + deadline_s
    try:
        with client.stream(method, url, json=json_body, headers=headers, timeout=TIMEOUT) as response:
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise LoginError(f"{base} sent an answer over {MAX_ANSWER_BYTES} bytes: is it "
                                     "a darkbloom coordinator?")
                if time.monotonic() > deadline:
                    raise LoginError(f"{base} took over {deadline_s:g} s to answer: is it a "
                                     "darkbloom coordinator, and is the network up?")
            status = response.status_code
    except httpx.HTTPError as exc:
        raise LoginError(f"cannot reach the coordinator at {base} ({type(exc).__name__}): is it "
                         "running, and is the URL right (--coordinator)?") from None
    try:
        body = json.loads(data) if data else {}
    except (ValueError, RecursionError):  # deep nesting is a RecursionError, not a ValueError
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
                    and is_token(token) and isinstance(account, str) and account.isprintable()):
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
