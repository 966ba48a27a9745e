"""A hostile review of the web console (issue 12) over plain HTTP: stored and reflected XSS
through every string that reaches a page, CSRF on the cookie's unsafe routes, odd inputs on every
page route, static path traversal, CORS with odd origins, and secrets in cacheable answers.

Each finding became a test that failed first and passes since its fix."""

from __future__ import annotations

import asyncio
import html
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from darkbloom.crypto import KeyPair
from darkbloom.inference.catalog import DEFAULT_MODEL
from tests.e2e.harness import Coordinator

ORIGIN = "http://console.example.com"  # http: this plain-http client keeps its cookies
PASSWORD = "long enough pw"
# Markup that would run (or break out of an attribute) if any of it reached a page unescaped.
EVIL = '<img src=x onerror=alert(1)>"\'</script><svg onload=alert(2)>'
EVIL_MODEL = "evil-model"
PAGES = ("/", "/signin", "/signup", "/chat", "/keys", "/billing", "/models", "/network",
         "/network/live", "/providers", "/link", "/earn")


class RawProvider:
    """A hostile operator's provider: a bare WebSocket that registers markup as its hardware
    strings (min_trust_level=none lets it in) and stays connected while the tests run."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)

    async def _run(self) -> None:
        self.stopping = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.coordinator.provider_token}"}
        async with websockets.connect(self.coordinator.ws_url, additional_headers=headers) as ws:
            await ws.send(json.dumps({
                "type": "register", "backend": "llama.cpp", "version": "0.0.0",
                "hardware": {"chip_name": EVIL, "machine_model": EVIL, "memory_gb": 16,
                             "cpu_cores": {"total": 8}},
                "models": [{"id": DEFAULT_MODEL.id, "weight_hash": DEFAULT_MODEL.weight_hash},
                           {"id": EVIL_MODEL, "weight_hash": "a" * 64}],
                "public_key": KeyPair.generate().public_b64}))
            assert json.loads(await ws.recv())["type"] == "registered"
            await ws.send(json.dumps({
                "type": "heartbeat", "status": "idle", "warm_models": [DEFAULT_MODEL.id, EVIL_MODEL],
                "backend_capacity": {"slots": [{"model": DEFAULT_MODEL.id}, {"model": EVIL_MODEL}],
                                     "total_memory_gb": 16}}))
            self.ready.set()
            await self.stopping.wait()

    def start(self) -> RawProvider:
        self.thread.start()
        assert self.ready.wait(30), "the raw provider did not register"
        return self

    def stop(self) -> None:
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    workdir = tmp_path_factory.mktemp("hostile-console")
    catalog = workdir / "catalog.json"
    catalog.write_text(json.dumps({"models": [{
        "id": EVIL_MODEL, "display_name": EVIL, "description": EVIL, "quantization": EVIL[:32],
        "context_length": 4096, "size_bytes": 1000, "sha256": "a" * 64, "filename": "evil.gguf",
        "download_url": "http://127.0.0.1:9/evil.gguf"}]}))
    started = Coordinator(workdir, public_url=ORIGIN, min_trust_level="none",
                          catalog_file=catalog).start()
    provider = RawProvider(started).start()
    try:
        yield started
    finally:
        provider.stop()
        started.stop()


def _http(coordinator: Coordinator) -> httpx.Client:
    return httpx.Client(base_url=coordinator.base_url, timeout=30)


def _signed_up(http: httpx.Client) -> httpx.Response:
    made = http.post("/v1/auth/signup", json={"email": f"h-{uuid.uuid4().hex[:8]}@example.com",
                                              "password": PASSWORD})
    assert made.status_code == 201
    return made


def _csrf(http: httpx.Client) -> dict[str, str]:
    return {"x-csrf-token": http.cookies["darkbloom_csrf"]}


# --- what holds ---------------------------------------------------------------------------------

def test_hostile_strings_reach_every_page_only_escaped(coordinator: Coordinator) -> None:
    """Catalog display names, provider-reported chip names and API key labels are markup an
    attacker chooses; on every page they must arrive as text."""
    with _http(coordinator) as http:
        _signed_up(http)
        assert http.post("/v1/auth/keys", json={"label": EVIL}, headers=_csrf(http)).status_code == 200
        seen_model = False
        for path in PAGES:
            page = http.get(path, follow_redirects=True)
            assert page.status_code == 200, path
            assert "<img src=x" not in page.text and "<svg onload" not in page.text, path
            assert "</script><" not in page.text, path
            seen_model |= EVIL_MODEL in page.text
        assert seen_model
        assert "&lt;img src=x onerror=alert(1)&gt;" in http.get("/network/live").text  # the chip
        assert "&lt;img src=x onerror=alert(1)&gt;" in http.get("/keys").text  # the label


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/auth/logout"), ("POST", "/v1/auth/keys"), ("DELETE", "/v1/auth/keys"),
    ("POST", "/v1/device/approve"), ("DELETE", "/v1/me/provider-tokens"),
    ("POST", "/v1/invite/redeem"), ("POST", "/v1/referral/register"), ("POST", "/v1/referral/apply"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("POST", "/v1/messages"),
    ("POST", "/v1/admin/credit"), ("PUT", "/v1/admin/pricing")])
def test_cookie_borne_unsafe_calls_need_the_csrf_header(coordinator: Coordinator, method: str,
                                                        path: str) -> None:
    with _http(coordinator) as http:
        _signed_up(http)
        body = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], ' \
               b'"user_code": "ABCD-EFGH", "code": "X", "id": "x", "key": "x"}'
        for headers in ({}, {"x-csrf-token": "0" * 64}, {"x-csrf-token": ""}):
            answer = http.request(method, path, content=body,
                                  headers={"content-type": "application/json", **headers})
            assert answer.status_code == 403, (path, headers, answer.text)


ODD_QUERIES = (
    "next=%00", "next=%ff%fe", "next=" + "A" * 6000, "code=%00", "code=%ff", "code=" + "Z" * 5000,
    "session_id=%3Cscript%3E", "hardware=%00&memory=1e999&hours=nan&price=-inf&model=%ff",
    "memory=99999999999999999999999999999999", "memory=-1&hours=1e308", "memory=1&memory=2&hours=x",
    "next=/%09/evil.example", "x=%", "%=%", "next=%e2%80%ae", "a=" + "%ff" * 3000,
    "memory=%EF%BC%91", "hours=%D9%A1%D9%A1", "stripe=return&checkout=cancelled")


@pytest.mark.parametrize("path", PAGES)
def test_odd_query_strings_never_5xx_nor_stall(coordinator: Coordinator, path: str) -> None:
    with _http(coordinator) as http:
        _signed_up(http)
        for query in ODD_QUERIES:  # a stall ends in the client's timeout, an error
            page = http.get(f"{path}?{query}", follow_redirects=False)
            assert page.status_code < 500, (path, query)
            assert "content-security-policy" in page.headers
            assert "<script>" not in page.text and "%3Cscript" not in page.text.lower()


@pytest.mark.parametrize("next_path", ["/%09/evil.example", "/%0a/evil.example", "/%0d%0a/evil.example",
                                       "%2F%2Fevil.example", "/%5Cevil.example", "//%09evil.example",
                                       "javascript:alert(1)", "/\u3000/evil.example"])
def test_next_never_leaves_the_site(coordinator: Coordinator, next_path: str) -> None:
    """Browsers drop tabs and newlines from URLs: ``/\\t/evil`` is ``//evil``."""
    with _http(coordinator) as http:
        page = http.get(f"/signin?next={next_path}")
    assert page.status_code == 200
    target = html.unescape(page.text.split('data-next="')[1].split('"')[0])
    as_browser_reads = "".join(ch for ch in target if ch not in "\t\n\r").replace("\\", "/")
    assert as_browser_reads.startswith("/") and not as_browser_reads.startswith("//")


@pytest.mark.parametrize("path", [
    "/static/..%2f..%2fapp.py", "/static/%2e%2e/%2e%2e/__init__.py", "/static/js/%5c..%5c..%5c__init__.py",
    "/static/%00", "/static/js/%00common.js", "/static/%ff", "/static//etc/passwd", "/static/" + "a" * 5000])
def test_static_paths_stay_in_the_folder(coordinator: Coordinator, path: str) -> None:
    with _http(coordinator) as http:
        answer = http.get(path)
    assert answer.status_code == 404
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/chat"), ("DELETE", "/network"), ("PUT", "/static/console.css"), ("GET", "/nope"),
    ("GET", "/chat"), ("GET", "/static"), ("GET", "/network/live/"), ("GET", "/static/js/common.js"),
    ("GET", "/v1/payments/usage?limit=abc"), ("POST", "/v1/auth/login")])
def test_every_answer_has_the_security_headers(coordinator: Coordinator, method: str, path: str) -> None:
    with _http(coordinator) as http:
        answer = http.request(method, path, follow_redirects=False)
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize("origin", [
    "null", "http://console.example.com/", "http://console.example.com.evil.example",
    "http://evil.console.example.com", "https://console.example.com", "http://console.example.com:80",
    "http://evilconsole.example.com", "http://console.example.co", "http://console.example.com, null"])
def test_odd_origins_get_no_cors(coordinator: Coordinator, origin: str) -> None:
    with _http(coordinator) as http:
        simple = http.get("/v1/auth/keys", headers={"origin": origin})
        pre = http.options("/v1/auth/keys", headers={"origin": origin,
                                                     "access-control-request-method": "POST"})
    for answer in (simple, pre):
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-credentials" not in answer.headers


def test_a_key_is_never_on_a_page_and_sign_out_ends_the_session(coordinator: Coordinator) -> None:
    with _http(coordinator) as http:
        made = _signed_up(http)
        secret = http.post("/v1/auth/keys", json={"label": "x"}, headers=_csrf(http)).json()["api_key"]
        session = http.cookies["darkbloom_session"]
        for path in PAGES:
            assert secret not in http.get(path).text
            assert made.json()["session_token"] not in http.get(path).text
        assert secret not in http.get("/v1/auth/keys").text
        assert http.post("/v1/auth/logout", headers=_csrf(http)).status_code == 200
    stale = {"darkbloom_session": session}
    assert httpx.get(f"{coordinator.base_url}/v1/me", cookies=stale).status_code == 401
    assert httpx.get(f"{coordinator.base_url}/keys", cookies=stale).status_code == 303


def test_network_live_survives_a_flood(coordinator: Coordinator) -> None:
    """Public and unauthenticated: renders come from the stats cache (single flight, tested in
    test_stats); its cost is measured in `make bench`, never asserted here."""
    with _http(coordinator) as http:
        for _ in range(100):
            assert http.get("/network/live").status_code == 200


# --- findings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["signup", "login", "create_key"])
def test_answers_with_secrets_are_never_stored(coordinator: Coordinator, what: str) -> None:
    with _http(coordinator) as http:
        made = _signed_up(http)
        if what == "signup":
            answer = made
        elif what == "login":
            answer = http.post("/v1/auth/login", json={"email": made.json()["email"], "password": PASSWORD})
        else:
            answer = http.post("/v1/auth/keys", json={}, headers=_csrf(http))
        assert answer.status_code in (200, 201)
    assert "no-store" in answer.headers.get("cache-control", "")


def test_session_cookie_is_secure_on_an_https_console(tmp_path: Path) -> None:
    """Behind a TLS proxy the hop is plain http, yet the browser is on https."""
    behind_tls = Coordinator(tmp_path, public_url="https://console.example.com").start()
    try:
        with _http(behind_tls) as http:
            made = _signed_up(http)
    finally:
        behind_tls.stop()
    cookies = made.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("darkbloom_session="))
    csrf = next(c for c in cookies if c.startswith("darkbloom_csrf="))
    assert "secure" in session.lower() and "secure" in csrf.lower()


def test_workdir_is_not_served(coordinator: Coordinator) -> None:
    """The state directory (database, keys) is never reachable under /static."""
    state = Path(coordinator.env["DARKBLOOM_STATE_DIR"])
    with _http(coordinator) as http:
        for name in [p.name for p in state.iterdir()][:5]:
            assert http.get(f"/static/{name}").status_code == 404
