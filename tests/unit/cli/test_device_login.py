"""`darkbloom login`'s protocol side (RFC 8628 shape) against scripted coordinator answers, on a
clock the test controls; and the token file."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from darkbloom.cli import device_login
from darkbloom.cli.device_login import DeviceCode, LoginError

BASE = "http://coordinator.test"
TOKEN = "darkbloom-pt-" + "ab" * 32
CODE = DeviceCode("d" * 64, "ABCD-EF23", f"{BASE}/link", expires_in=900, interval=5)


@pytest.mark.parametrize(("url", "base"), [
    ("ws://127.0.0.1:8000/ws/provider", "http://127.0.0.1:8000"),
    ("wss://c.example.com/ws/provider", "https://c.example.com"),
    ("wss://c.example.com/net/ws/provider/", "https://c.example.com/net"),
    ("https://c.example.com/", "https://c.example.com"),
    ("WSS://c.example.com:8443/ws/provider", "https://c.example.com:8443"),
])
def test_http_base(url: str, base: str) -> None:
    assert device_login.http_base(url) == base


@pytest.mark.parametrize("url", ["ftp://x/", "c.example.com", "wss:///ws/provider", ""])
def test_http_base_refuses(url: str) -> None:
    with pytest.raises(LoginError, match="not a coordinator URL"):
        device_login.http_base(url)


def _client(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)
    return httpx.Client(transport=httpx.MockTransport(handler))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _poll(answers: list[httpx.Response], code: DeviceCode = CODE,
          clock: Clock | None = None) -> tuple[device_login.Linked, Clock, list[httpx.Request]]:
    clock = clock or Clock()
    seen: list[httpx.Request] = []
    with _client(answers, seen) as client:
        linked = device_login.poll_token(client, BASE, code, clock=lambda: clock.now, sleep=clock.sleep)
    return linked, clock, seen


PENDING = httpx.Response(200, json={"status": "authorization_pending"})
AUTHORIZED = httpx.Response(200, json={"status": "authorized", "token": TOKEN, "account_id": "acct-1"})
SLOW_DOWN = httpx.Response(429, json={"error": {"type": "slow_down", "message": "slow down"}})


def test_pending_slow_down_then_authorized() -> None:
    linked, clock, seen = _poll([PENDING, SLOW_DOWN, PENDING, AUTHORIZED])
    assert linked == device_login.Linked(TOKEN, "acct-1")
    assert clock.slept == [5, 5, 10, 10]  # slow_down adds 5 s for the rest of the polling
    assert all(r.url == f"{BASE}/v1/device/token" and r.method == "POST" for r in seen)
    assert json.loads(seen[0].content) == {"device_code": CODE.device_code}


def _error(status: int, kind: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": kind, "message": kind}})


@pytest.mark.parametrize(("answer", "message"), [
    (_error(410, "expired_token"), "expired"),
    (_error(404, "invalid_grant"), "no longer knows this code"),
    (httpx.Response(200, json={"status": "access_denied"}), "denied"),
    (httpx.Response(200, json={"status": "authorized", "token": "sk-db-not-a-provider-token",
                               "account_id": "a"}), "no usable token"),
    (_error(400, "invalid_request_error"), "refused the code"),
])
def test_poll_failures_are_one_line(answer: httpx.Response, message: str) -> None:
    with pytest.raises(LoginError, match=message) as caught:
        _poll([PENDING, answer])
    assert "\n" not in str(caught.value) and "darkbloom login" in str(caught.value)


def test_the_code_expires_on_the_clock() -> None:
    code = DeviceCode("d" * 64, "ABCD-EF23", f"{BASE}/link", expires_in=12, interval=5)
    with pytest.raises(LoginError, match="expired before it was approved"):
        _poll([PENDING, PENDING, PENDING], code)


def test_server_errors_and_outages_are_polled_through() -> None:
    def handler_factory() -> Callable[[httpx.Request], httpx.Response]:
        calls = iter(["down", "500", "ok"])

        def handler(request: httpx.Request) -> httpx.Response:
            step = next(calls)
            if step == "down":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(500, json={}) if step == "500" else AUTHORIZED
        return handler

    clock = Clock()
    with httpx.Client(transport=httpx.MockTransport(handler_factory())) as client:
        linked = device_login.poll_token(client, BASE, CODE, clock=lambda: clock.now, sleep=clock.sleep)
    assert linked.token == TOKEN and clock.slept == [5, 5, 5]


def _request_code(answer: httpx.Response) -> DeviceCode:
    with _client([answer], []) as client:
        return device_login.request_code(client, BASE)


def test_request_code() -> None:
    code = _request_code(httpx.Response(200, json={
        "device_code": "d" * 64, "user_code": "ABCD-EF23", "verification_uri": f"{BASE}/link",
        "expires_in": 900, "interval": 5}))
    assert code == CODE
    odd = _request_code(httpx.Response(200, json={
        "device_code": "d", "user_code": "X", "verification_uri": f"{BASE}/link",
        "expires_in": 10**9, "interval": 0}))
    assert (odd.expires_in, odd.interval) == (3600, 1)  # bounded, whatever the server says


@pytest.mark.parametrize("answer", [
    httpx.Response(200, text="<html>not a coordinator</html>"),
    httpx.Response(200, json=["a list"]),
    httpx.Response(200, json={"device_code": "d", "user_code": "X",
                              "verification_uri": "javascript:alert(1)"}),
    httpx.Response(404, text="not found"),
    httpx.Response(200, content=b"{" + b" " * (2 * device_login.MAX_ANSWER_BYTES)),
])
def test_request_code_refuses_what_is_not_a_coordinator(answer: httpx.Response) -> None:
    with pytest.raises(LoginError) as caught:
        _request_code(answer)
    assert "\n" not in str(caught.value)


def test_unreachable_coordinator() -> None:
    with httpx.Client() as client, pytest.raises(LoginError, match="cannot reach the coordinator"):
        device_login.request_code(client, "http://127.0.0.1:9")
