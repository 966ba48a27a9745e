"""The console's security rules over plain HTTP (issue 12 "Security"): headers on every page and
answer, CORS per api.md §1, cookies, sign-in redirects that stay on this site."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from darkbloom.console.headers import CONTENT_SECURITY_POLICY
from tests.e2e.harness import Coordinator

ORIGIN = "http://console.example.com"  # http: cookies stay usable by this plain-http client
PAGES = ("/signin", "/signup", "/models", "/network", "/earn")
PRIVATE = ("/chat", "/keys", "/billing", "/providers", "/link")


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    started = Coordinator(tmp_path_factory.mktemp("console-security"), public_url=ORIGIN).start()
    try:
        yield started
    finally:
        started.stop()


def _http(coordinator: Coordinator) -> httpx.Client:
    return httpx.Client(base_url=coordinator.base_url, timeout=30)


@pytest.mark.parametrize("path", PAGES)
def test_public_pages_render_with_strict_headers(coordinator: Coordinator, path: str) -> None:
    with _http(coordinator) as http:
        page = http.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " on" + "click=" not in page.text  # no inline script


def test_api_answers_carry_the_headers_too(coordinator: Coordinator) -> None:
    with _http(coordinator) as http:
        answer = http.get("/v1/models")
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("path", PRIVATE)
def test_private_pages_send_strangers_to_sign_in(coordinator: Coordinator, path: str) -> None:
    with _http(coordinator) as http:
        page = http.get(path, follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == f"/signin?next={path}"
        stale = http.get(path, follow_redirects=False, cookies={"darkbloom_session": "dbs-" + "0" * 64})
        assert stale.status_code == 303


@pytest.mark.parametrize("next_path", ["//evil.example/x", "https://evil.example/", "/\\x", "javascript:x"])
def test_sign_in_never_sends_people_off_site(coordinator: Coordinator, next_path: str) -> None:
    with _http(coordinator) as http:
        page = http.get("/signin", params={"next": next_path})
    assert page.status_code == 200
    assert 'data-next="/chat"' in page.text


def test_sign_up_sets_httponly_session_and_csrf_cookies(coordinator: Coordinator) -> None:
    email = f"c-{uuid.uuid4().hex[:8]}@example.com"
    with _http(coordinator) as http:
        made = http.post("/v1/auth/signup", json={"email": email, "password": "long enough pw"})
        assert made.status_code == 201
        cookies = made.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("darkbloom_session="))
        csrf = next(c for c in cookies if c.startswith("darkbloom_csrf="))
        assert "HttpOnly" in session and "SameSite=lax" in session
        assert "HttpOnly" not in csrf and "SameSite=strict" in csrf
        assert csrf.split(";")[0].split("=", 1)[1] == made.json()["csrf_token"]
        # A cookie-borne unsafe call needs the header; with it, it works.
        assert http.post("/v1/auth/keys", json={}).status_code == 403
        token = http.cookies["darkbloom_csrf"]
        assert http.post("/v1/auth/keys", json={}, headers={"x-csrf-token": token}).status_code == 200
        page = http.get("/keys")
        assert page.status_code == 200 and email in page.text
        out = http.post("/v1/auth/logout", headers={"x-csrf-token": token})
        assert out.status_code == 200
        assert any(c.startswith("darkbloom_csrf=") for c in out.headers.get_list("set-cookie"))
        assert http.get("/keys", follow_redirects=False).status_code == 303


def test_cors_allows_only_the_console_origin(coordinator: Coordinator) -> None:
    with _http(coordinator) as http:
        pre = http.options("/v1/chat/completions", headers={
            "origin": ORIGIN, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "x-api-key" in pre.headers["access-control-allow-headers"]
        assert set(pre.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {
            "GET", "POST", "PUT", "DELETE", "OPTIONS"}
        other = http.options("/v1/chat/completions", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        assert other.status_code == 204 and "access-control-allow-origin" not in other.headers
        simple = http.get("/v1/models", headers={"origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        assert "x-darkbloom-receipt" in simple.headers["access-control-expose-headers"]
        assert "access-control-allow-origin" not in http.get(
            "/v1/models", headers={"origin": "https://evil.example"}).headers


def test_static_assets_are_served_from_the_package(coordinator: Coordinator) -> None:
    with _http(coordinator) as http:
        script = http.get("/static/js/common.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert http.get("/static/console.css").status_code == 200
        assert http.get("/static/../app.py").status_code == 404
