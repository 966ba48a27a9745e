"""Sign-up, sessions (cookie + CSRF, and bearer), keys over HTTP and admins, against a real
coordinator and a real llama.cpp provider."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator, Provider, _cli

BOSS = "boss@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def accounts_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path_factory.mktemp("accounts"), admin_emails=json.dumps([BOSS]),
                              admin_key="adm-" + uuid.uuid4().hex).start()
    provider = Provider(coordinator).start()
    try:
        yield coordinator
    finally:
        provider.stop()
        coordinator.stop()


def _email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def _signup(stack: Coordinator, email: str | None = None) -> tuple[httpx.Client, dict[str, Any]]:
    """A client holding the new account's session cookie, and the sign-up answer."""
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    answer = http.post("/v1/auth/signup", json={"email": email or _email(), "password": PASSWORD})
    assert answer.status_code == 201, answer.text
    return http, answer.json()


def _fund(stack: Coordinator, account_id: str) -> None:
    """A new account has no money: requests would be 402 (tests/e2e/test_money.py)."""
    _cli(["admin", "credit", "--account", account_id, "--amount", "1"], stack.env)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def _chat(stack: Coordinator, key: str) -> str | None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=120)
    done = client.chat.completions.create(model=MODEL, max_tokens=2,
                                          messages=[{"role": "user", "content": "hi"}])
    return done.choices[0].message.content


def test_signup_cookie_and_csrf(accounts_stack: Coordinator) -> None:
    email = _email()
    http, body = _signup(accounts_stack, "  " + email.upper() + " ")
    assert set(body) == {"account_id", "email", "session_token", "csrf_token"}
    assert body["email"] == email and body["session_token"].startswith("dbs-")
    cookie = http.cookies.get("darkbloom_session")
    assert cookie == body["session_token"]
    login = http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    set_cookie = login.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "secure" not in set_cookie

    me = http.get("/v1/me")  # a safe method needs no CSRF token
    assert me.status_code == 200 and me.json()["email"] == email and me.json()["is_admin"] is False
    assert me.json()["created_at"].endswith("Z")
    # The login above opened a new session (and replaced the cookie); its CSRF token is needed now.
    refused = _error(http.post("/v1/auth/keys", json={}), 403)
    assert refused["type"] == "forbidden" and "X-CSRF-Token" in refused["message"]
    stale = http.post("/v1/auth/keys", json={}, headers={"x-csrf-token": body["csrf_token"]})
    assert stale.status_code == 403
    made = http.post("/v1/auth/keys", json={"label": "cookie"},
                     headers={"x-csrf-token": login.json()["csrf_token"]})
    assert made.status_code == 200, made.text
    assert made.json()["api_key"].startswith("sk-db-")

    taken = _error(httpx.post(f"{accounts_stack.base_url}/v1/auth/signup",
                              json={"email": email.title(), "password": PASSWORD}), 409)
    assert taken["code"] == "email_taken"


def test_bearer_session_needs_no_csrf_and_logout_ends_it(accounts_stack: Coordinator) -> None:
    _, body = _signup(accounts_stack)
    bearer = httpx.Client(base_url=accounts_stack.base_url, timeout=30,
                          headers={"authorization": f"Bearer {body['session_token']}"})
    assert bearer.post("/v1/auth/keys", json={}).status_code == 200
    assert bearer.get("/v1/me").json()["account_id"] == body["account_id"]
    out = bearer.post("/v1/auth/logout")
    assert out.status_code == 200 and out.json() == {"status": "signed_out"}
    assert _error(bearer.get("/v1/me"), 401)["code"] == "invalid_session"
    assert _error(httpx.get(f"{accounts_stack.base_url}/v1/me"), 401)["code"] == "missing_session"


def test_login_failures_are_identical(accounts_stack: Coordinator) -> None:
    email = _email()
    _signup(accounts_stack, email)
    url = f"{accounts_stack.base_url}/v1/auth/login"
    unknown = httpx.post(url, json={"email": _email(), "password": PASSWORD})
    wrong = httpx.post(url, json={"email": email, "password": PASSWORD + "!"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.content == wrong.content
    assert unknown.json()["error"]["code"] == "invalid_credentials"
    assert httpx.post(url, json={"email": email.upper(), "password": PASSWORD}).status_code == 200


def test_api_keys_are_refused_on_session_routes(accounts_stack: Coordinator) -> None:
    key = accounts_stack.api_key
    for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}):
        for method, path in (("GET", "/v1/me"), ("GET", "/v1/auth/keys"), ("POST", "/v1/auth/keys")):
            error = _error(httpx.request(method, accounts_stack.base_url + path, headers=headers), 403)
            assert error["type"] == "forbidden" and "API keys are not accepted" in error["message"]


def test_keys_over_http_and_revocation_at_once(accounts_stack: Coordinator) -> None:
    _, body = _signup(accounts_stack)
    http = httpx.Client(base_url=accounts_stack.base_url, timeout=30,
                        headers={"authorization": f"Bearer {body['session_token']}"})
    made = http.post("/v1/auth/keys", json={"label": "laptop"}).json()
    _fund(accounts_stack, body["account_id"])
    assert set(made) == {"api_key", "account_id", "id", "prefix", "label", "created_at"}
    assert made["account_id"] == body["account_id"] and made["prefix"] == made["api_key"][:12]
    assert len(made["api_key"]) == 6 + 64 and int(made["api_key"][6:], 16) >= 0
    second = http.post("/v1/auth/keys").json()
    listed = http.get("/v1/auth/keys").json()["keys"]
    assert [k["id"] for k in listed] == [made["id"], second["id"]]
    assert listed[0] == {"id": made["id"], "prefix": made["prefix"], "label": "laptop",
                         "created_at": made["created_at"], "last_used_at": None}
    assert all("api_key" not in k for k in listed)

    assert _chat(accounts_stack, made["api_key"]) is not None  # real provider; the key is now cached
    revoked = http.request("DELETE", "/v1/auth/keys", json={"key": made["api_key"]})
    assert revoked.json() == {"status": "revoked"}
    with pytest.raises(openai.AuthenticationError):
        _chat(accounts_stack, made["api_key"])
    assert _chat(accounts_stack, second["api_key"]) is not None
    assert http.request("DELETE", "/v1/auth/keys", json={"id": second["id"]}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        _chat(accounts_stack, second["api_key"])

    gone = _error(http.request("DELETE", "/v1/auth/keys", json={"id": second["id"]}), 404)
    assert gone["message"] == "key not found or already revoked"
    assert _error(http.request("DELETE", "/v1/auth/keys", json={}), 400)["param"] == "key"
    other = _error(http.request("DELETE", "/v1/auth/keys", json={"key": accounts_stack.api_key}), 403)
    assert other["message"] == "you can only revoke your own keys"
    assert _chat(accounts_stack, accounts_stack.api_key) is not None
    assert http.get("/v1/auth/keys").json() == {"keys": []}


def test_a_key_revoked_elsewhere_stops_at_once(accounts_stack: Coordinator) -> None:
    """Revoked by the CLI (as another coordinator process would, straight in the database), a key
    this process has cached is refused by the very next inference request (its reservation reads
    the key in the same round trip), and by every other route once the cache is polled (1 s)."""
    _, body = _signup(accounts_stack)
    http = httpx.Client(base_url=accounts_stack.base_url, timeout=30,
                        headers={"authorization": f"Bearer {body['session_token']}"})
    made = http.post("/v1/auth/keys").json()
    _fund(accounts_stack, body["account_id"])
    assert _chat(accounts_stack, made["api_key"]) is not None  # cached now
    _cli(["keys", "revoke", made["id"]], accounts_stack.env)
    with pytest.raises(openai.AuthenticationError) as refused:
        _chat(accounts_stack, made["api_key"])
    assert refused.value.code == "invalid_api_key"
    deadline = time.monotonic() + 10  # generous: the poll runs every second
    balance = f"{accounts_stack.base_url}/v1/payments/balance"
    while httpx.get(balance, headers={"authorization": f"Bearer {made['api_key']}"}).status_code != 401:
        assert time.monotonic() < deadline, "a key revoked elsewhere was still accepted after 10 s"
        time.sleep(0.2)


def test_admins_by_email_setting_and_by_grant(accounts_stack: Coordinator) -> None:
    # Nobody verifies email ownership, so an address in DARKBLOOM_ADMIN_EMAILS cannot be claimed
    # over HTTP: the operator creates it with the CLI.
    claimed = httpx.post(f"{accounts_stack.base_url}/v1/auth/signup",
                         json={"email": BOSS.upper(), "password": PASSWORD})
    assert claimed.status_code == 403 and claimed.json()["error"]["param"] == "email"
    subprocess.run([sys.executable, "-m", "darkbloom", "admin", "grant", "--email", BOSS, "--create"],
                   env=accounts_stack.env, input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True,
                   capture_output=True, timeout=120)
    boss = httpx.post(f"{accounts_stack.base_url}/v1/auth/login",
                      json={"email": BOSS.upper(), "password": PASSWORD}).json()
    assert httpx.get(f"{accounts_stack.base_url}/v1/me",
                     headers={"authorization": f"Bearer {boss['session_token']}"}).json()["is_admin"]
    email = _email()
    _, body = _signup(accounts_stack, email)
    me = f"{accounts_stack.base_url}/v1/me"
    auth = {"authorization": f"Bearer {body['session_token']}"}
    assert httpx.get(me, headers=auth).json()["is_admin"] is False
    _cli(["admin", "grant", "--email", email.upper()], accounts_stack.env)
    assert httpx.get(me, headers=auth).json()["is_admin"] is True


@pytest.mark.parametrize(("body", "param"), [
    ({"email": "nope", "password": PASSWORD}, "email"),
    ({"email": 5, "password": PASSWORD}, "email"),
    ({"email": "\ud800@example.com", "password": PASSWORD}, "email"),
    ({"email": "x" * 100_000 + "@example.com", "password": PASSWORD}, None),  # over 64 KiB: 413
    ({"email": "a@example.com"}, "password"),
    ({"email": "a@example.com", "password": "short"}, "password"),
    ({"email": "a@example.com", "password": ["x" * 12]}, "password"),
    ({"email": "a@example.com", "password": "\udfff" * 12}, "password"),
    ({"email": "a@example.com", "password": "x" * 5000}, "password"),
])
def test_odd_sign_up_input_is_a_clear_4xx(accounts_stack: Coordinator, body: dict[str, Any],
                                          param: str | None) -> None:
    answer = httpx.post(f"{accounts_stack.base_url}/v1/auth/signup", content=json.dumps(body),
                        headers={"content-type": "application/json"})
    if param is None:
        assert answer.status_code == 413, answer.text
        return
    assert _error(answer, 400)["param"] == param


def test_odd_bodies(accounts_stack: Coordinator) -> None:
    url = f"{accounts_stack.base_url}/v1/auth/login"
    for raw in (b"{", b"[]", b"\xff\xfe", b"[" * 30_000 + b"]" * 30_000, b'"x"'):
        assert httpx.post(url, content=raw).status_code == 400


def test_logs_hold_no_passwords_tokens_or_emails(accounts_stack: Coordinator, tmp_path: Path) -> None:
    email = _email()
    _, body = _signup(accounts_stack, email)
    httpx.post(f"{accounts_stack.base_url}/v1/auth/login",
               json={"email": email, "password": "wrong password"})
    log = accounts_stack.log_text()
    for secret in (PASSWORD, "wrong password", email, body["session_token"], body["csrf_token"]):
        assert secret not in log
