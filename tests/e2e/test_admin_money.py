"""Admin grants, invite codes, referrals and financial rate limits against a real coordinator (no
provider needed), on SQLite and on PostgreSQL: every edge case of api.md §8 and §10, the 429, and
`darkbloom admin audit` agreeing with every balance at the end."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import Coordinator, _cli

BOSS = "boss@example.com"
PASSWORD = "correct horse battery staple"
ADMIN_KEY = "adm-" + uuid.uuid4().hex


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def money_stack(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """Rate limits high enough that only the tests that want a 429 see one."""
    name, url = fresh_postgres_database() if request.param == "postgresql" else (None, None)
    coordinator = Coordinator(tmp_path_factory.mktemp(f"money-{request.param}"), database_url=url,
                              admin_key=ADMIN_KEY, admin_emails=json.dumps([BOSS]),
                              financial_rate_per_s=1000, financial_burst=1000)
    try:
        yield coordinator.start()
    finally:
        coordinator.stop()
        if name:
            drop_postgres_database(name)


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """The defaults of api.md §1: financial routes 0.2/s, burst 3."""
    coordinator = Coordinator(tmp_path_factory.mktemp("limited"), admin_key=ADMIN_KEY,
                              financial_rate_per_s=0.2, financial_burst=3)
    try:
        yield coordinator.start()
    finally:
        coordinator.stop()


class User:
    def __init__(self, stack: Coordinator, signup: dict[str, Any]) -> None:
        self.account_id: str = signup["account_id"]
        self.email: str = signup["email"]
        self.http = httpx.Client(base_url=stack.base_url, timeout=30,
                                 headers={"authorization": f"Bearer {signup['session_token']}"})

    def balance(self) -> tuple[int, int]:
        got = self.http.get("/v1/payments/balance").json()
        return got["balance_micro_usd"], got["withdrawable_micro_usd"]


def _signup(stack: Coordinator) -> User:
    answer = httpx.post(f"{stack.base_url}/v1/auth/signup", timeout=30,
                        json={"email": f"user-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD})
    assert answer.status_code == 201, answer.text
    return User(stack, answer.json())


def _admin(stack: Coordinator) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=30, headers={"authorization": f"Bearer {ADMIN_KEY}"})


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = dict(response.json()["error"])
    if param is not None:
        assert error["param"] == param, error
    return error


def _grant(admin: httpx.Client, kind: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"idempotency-key": key or uuid.uuid4().hex}
    return admin.post(f"/v1/admin/{kind}", json=body, headers=headers)


# --- admin credit, reward, debit ---------------------------------------------------------------------


def test_credit_reward_debit_shapes(money_stack: Coordinator) -> None:
    user, admin = _signup(money_stack), _admin(money_stack)
    credit = _grant(admin, "credit", {"email": user.email.upper(), "amount_usd": "0.0005", "note": "hi"})
    assert credit.status_code == 200, credit.text
    assert credit.json() == {"ok": True, "account_id": user.account_id, "email": user.email,
                             "credited_usd": "0.000500", "withdrawable": False, "balance_after": 0.0005,
                             "balance_after_micro_usd": 500}
    reward = _grant(admin, "reward", {"email": user.email, "amount_usd": "2"})
    assert reward.json() == {"ok": True, "account_id": user.account_id, "email": user.email,
                             "rewarded_usd": "2.000000", "withdrawable": True, "balance_after": 2.0005,
                             "withdrawable_after": 2.0, "balance_after_micro_usd": 2_000_500}
    # A debit spends non-withdrawable money first (the min rule).
    debit = _grant(admin, "debit", {"email": user.email, "amount_usd": "1.0005"})
    assert debit.json() == {"ok": True, "account_id": user.account_id, "email": user.email,
                            "debited_usd": "1.000500", "balance_after": 1.0, "withdrawable_after": 1.0,
                            "balance_after_micro_usd": 1_000_000}
    assert user.balance() == (1_000_000, 1_000_000)
    # One the balance cannot cover takes nothing: 402.
    short = _error(_grant(admin, "debit", {"email": user.email, "amount_usd": "1.000001"}), 402)
    assert short["type"] == "insufficient_funds"
    assert user.balance() == (1_000_000, 1_000_000)
    # The cap is per grant, inclusive.
    assert _grant(admin, "credit", {"email": user.email, "amount_usd": "10000"}).status_code == 200
    whole = _grant(admin, "credit", {"email": user.email, "amount_usd": 7})  # a JSON integer is exact
    assert whole.json()["credited_usd"] == "7.000000"


def test_idempotency_key(money_stack: Coordinator) -> None:
    user, admin = _signup(money_stack), _admin(money_stack)
    body = {"email": user.email, "amount_usd": "3.25", "note": "refund for ticket 7"}
    key = str(uuid.uuid4())
    first = _grant(admin, "credit", body, key)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = _grant(admin, "credit", {**body, "email": user.email.upper()}, key)  # the same request
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert user.balance() == (3_250_000, 0)
    for changed in ({**body, "amount_usd": "3.26"}, {**body, "note": "other"}, {"email": user.email,
                                                                                "amount_usd": "3.25"}):
        conflict = _error(_grant(admin, "credit", changed, key), 409, "Idempotency-Key")
        assert conflict["code"] == "idempotency_key_reused"
    other = _signup(money_stack)
    _error(_grant(admin, "credit", {**body, "email": other.email}, key), 409)
    assert user.balance() == (3_250_000, 0) and other.balance() == (0, 0)
    # The same key on another route is another grant (its ledger kind differs).
    assert _grant(admin, "reward", body, key).status_code == 200
    assert user.balance() == (6_500_000, 3_250_000)

    # Retried concurrently: one movement, every answer the first one's.
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _grant(admin, "credit", {"email": user.email, "amount_usd": "1"},
                                                 key), range(16)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    assert user.balance() == (7_500_000, 3_250_000)


@pytest.mark.parametrize(("headers", "fragment"), [
    ({}, "required"), ({"idempotency-key": "x" * 201}, "at most 200"), ({"idempotency-key": "a b"}, "ASCII"),
])
def test_idempotency_key_is_required_and_bounded(money_stack: Coordinator, headers: dict[str, str],
                                                 fragment: str) -> None:
    user, admin = _signup(money_stack), _admin(money_stack)
    for kind in ("credit", "reward", "debit"):
        refused = _error(admin.post(f"/v1/admin/{kind}", json={"email": user.email, "amount_usd": "1"},
                                    headers=headers), 400, "Idempotency-Key")
        assert fragment in refused["message"]
    assert user.balance() == (0, 0)
    ok = _grant(admin, "credit", {"email": user.email, "amount_usd": "1"}, uuid.uuid4().hex.ljust(200, "k"))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("amount", "fragment"), [
    ("0", "greater than 0"), ("0.000000", "greater than 0"), ("-1", "negative"), ("1.0000001", "decimal"),
    ("10000.000001", "at most"), ("1e3", "plain decimal"), ("", "plain decimal"), (" 1", "plain decimal"),
    ("NaN", "plain decimal"), (5.5, "string"), (True, "string"), ([1], "string"), (None, "required"),
    ("9" * 80, "too long"), (10**30, "too"),
])
def test_grant_amounts(money_stack: Coordinator, amount: Any, fragment: str) -> None:
    user, admin = _signup(money_stack), _admin(money_stack)
    refused = _error(_grant(admin, "credit", {"email": user.email, "amount_usd": amount}), 400, "amount_usd")
    assert fragment in refused["message"], refused
    assert user.balance() == (0, 0)


def test_grant_targets_and_auth(money_stack: Coordinator) -> None:
    admin, user = _admin(money_stack), _signup(money_stack)
    missing = _error(_grant(admin, "credit", {"email": "nobody@example.com", "amount_usd": "1"}), 404,
                     "email")
    assert missing["type"] == "not_found"
    _error(_grant(admin, "reward", {"email": "not an email", "amount_usd": "1"}), 400, "email")
    _error(_grant(admin, "credit", {"amount_usd": "1"}), 400, "email")
    _error(_grant(admin, "credit", {"email": user.email, "amount_usd": "1", "note": "n" * 501}), 400, "note")
    _error(admin.post("/v1/admin/credit", content=b"[1]", headers={"idempotency-key": "k",
                                                                   "content-type": "application/json"}), 400)
    body = {"email": user.email, "amount_usd": "1"}
    # Not an admin: a user's session, a user's API key, no credentials, a wrong admin key.
    assert _error(user.http.post("/v1/admin/credit", json=body, headers={"idempotency-key": "u"}), 403)
    key = user.http.post("/v1/auth/keys", json={}).json()["api_key"]
    _error(httpx.post(f"{money_stack.base_url}/v1/admin/credit", json=body,
                      headers={"authorization": f"Bearer {key}", "idempotency-key": "u"}), 403)
    _error(httpx.post(f"{money_stack.base_url}/v1/admin/credit", json=body,
                      headers={"idempotency-key": "u"}), 401)
    _error(httpx.post(f"{money_stack.base_url}/v1/admin/credit", json=body,
                      headers={"authorization": "Bearer adm-wrong", "idempotency-key": "u"}), 401)
    _error(user.http.get("/v1/admin/actions"), 403)
    assert user.balance() == (0, 0)


def test_an_admin_session_is_the_actor(money_stack: Coordinator) -> None:
    boss, user = _signup(money_stack), _signup(money_stack)
    _cli(["admin", "grant", "--email", boss.email], money_stack.env)
    key = uuid.uuid4().hex
    done = boss.http.post("/v1/admin/credit", json={"email": user.email, "amount_usd": "4", "note": "n"},
                          headers={"idempotency-key": key})
    assert done.status_code == 200, done.text
    actions = _admin(money_stack).get("/v1/admin/actions", params={"limit": 200}).json()["actions"]
    mine = [a for a in actions if a["reference"] == key]
    assert len(mine) == 1 and mine[0]["actor"] == boss.account_id and mine[0]["action"] == "admin_credit"
    assert mine[0]["target_account_id"] == user.account_id and mine[0]["amount_micro_usd"] == 4_000_000
    assert mine[0]["detail"]["note"] == "n" and mine[0]["created_at"].endswith("Z")


def test_action_list_pages(money_stack: Coordinator) -> None:
    admin, user = _admin(money_stack), _signup(money_stack)
    for _ in range(3):
        assert _grant(admin, "credit", {"email": user.email, "amount_usd": "0.01"}).status_code == 200
    page = admin.get("/v1/admin/actions", params={"limit": 2}).json()
    assert len(page["actions"]) == 2 and page["next_before"] == page["actions"][-1]["id"]
    assert {a["actor"] for a in page["actions"]} == {"admin-key"}
    following = admin.get("/v1/admin/actions", params={"limit": 2, "before": page["next_before"]}).json()
    assert following["actions"][0]["id"] < page["next_before"]
    for params in ({"limit": 0}, {"limit": 201}, {"limit": "x"}, {"before": 0}, {"before": "9" * 30}):
        _error(admin.get("/v1/admin/actions", params=params), 400)


# --- invite codes ------------------------------------------------------------------------------------


def test_invite_lifecycle(money_stack: Coordinator) -> None:
    admin, alice, bob = _admin(money_stack), _signup(money_stack), _signup(money_stack)
    code = "WELCOME-" + uuid.uuid4().hex[:8].upper()
    made = admin.post("/v1/admin/invite-codes", json={"code": code.lower(), "amount_usd": 5, "max_uses": 2})
    assert made.status_code == 201, made.text
    assert made.json() == {"code": code, "amount_usd": "5.00", "amount_micro_usd": 5_000_000, "max_uses": 2,
                           "expires_at": None}
    _error(admin.post("/v1/admin/invite-codes", json={"code": code, "amount_usd": "1"}), 409, "code")
    # Redeemed with an API key (a session works too), trimmed and upper-cased.
    key = alice.http.post("/v1/auth/keys", json={}).json()["api_key"]
    redeem = httpx.post(f"{money_stack.base_url}/v1/invite/redeem", json={"code": f"  {code.lower()} "},
                        headers={"authorization": f"Bearer {key}"})
    assert redeem.status_code == 200, redeem.text
    assert redeem.json() == {"credited_usd": "5.00", "balance_usd": "5.000000",
                             "credited_micro_usd": 5_000_000, "balance_micro_usd": 5_000_000}
    assert alice.balance() == (5_000_000, 0)
    again = _error(alice.http.post("/v1/invite/redeem", json={"code": code}), 400, "code")
    assert again["code"] == "already_used"
    assert bob.http.post("/v1/invite/redeem", json={"code": code}).status_code == 200
    carol = _signup(money_stack)
    exhausted = _error(carol.http.post("/v1/invite/redeem", json={"code": code}), 400)
    assert exhausted["code"] == "invite_exhausted"
    unknown = _error(carol.http.post("/v1/invite/redeem", json={"code": "NO-SUCH-CODE"}), 404)
    assert unknown["message"] == "invalid invite code"
    for bad in ({"code": ""}, {"code": "x" * 100}, {"code": "a b"}):
        _error(carol.http.post("/v1/invite/redeem", json=bad), 404)
    _error(carol.http.post("/v1/invite/redeem", json={}), 400, "code")
    _error(carol.http.post("/v1/invite/redeem", json={"code": 5}), 400, "code")
    _error(httpx.post(f"{money_stack.base_url}/v1/invite/redeem", json={"code": code}), 401)

    generated = admin.post("/v1/admin/invite-codes", json={"amount_usd": "0.50"}).json()
    assert generated["code"].startswith("INV-") and generated["max_uses"] == 1
    assert admin.request("DELETE", "/v1/admin/invite-codes", json={"code": generated["code"]}).json() == {
        "status": "deactivated"}
    inactive = _error(carol.http.post("/v1/invite/redeem", json={"code": generated["code"]}), 400)
    assert inactive["code"] == "invite_inactive"
    _error(admin.request("DELETE", "/v1/admin/invite-codes", json={"code": "NO-SUCH-CODE"}), 404)

    listed = {c["code"]: c for c in admin.get("/v1/admin/invite-codes").json()["invite_codes"]}
    assert set(listed[code]) == {"code", "amount_usd", "amount_micro_usd", "max_uses", "used_count", "active",
                                 "expires_at", "created_at"}
    assert (listed[code]["used_count"], listed[code]["active"]) == (2, True)
    assert listed[generated["code"]]["active"] is False and listed[generated["code"]]["amount_usd"] == "0.50"
    actions = [a["action"] for a in admin.get("/v1/admin/actions", params={"limit": 200}).json()["actions"]]
    assert {"invite_create", "invite_deactivate"} <= set(actions)
    assert carol.balance() == (0, 0)


def test_invite_expiry(money_stack: Coordinator) -> None:
    admin, user = _admin(money_stack), _signup(money_stack)
    soon = datetime.now(UTC) + timedelta(seconds=2)
    made = admin.post("/v1/admin/invite-codes", json={"amount_usd": "1.5", "max_uses": 0,
                                                      "expires_at": soon.isoformat().replace("+00:00", "Z")})
    assert made.status_code == 201, made.text
    assert made.json()["max_uses"] == 1 and made.json()["expires_at"].endswith("Z")
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    expired = _error(user.http.post("/v1/invite/redeem", json={"code": made.json()["code"]}), 400)
    assert expired["code"] == "invite_expired" and user.balance() == (0, 0)


@pytest.mark.parametrize(("body", "param"), [
    ({"amount_usd": "5.001"}, "amount_usd"), ({"amount_usd": "1000.01"}, "amount_usd"),
    ({"amount_usd": "0"}, "amount_usd"), ({"amount_usd": 5.5}, "amount_usd"), ({}, "amount_usd"),
    ({"amount_usd": "1", "max_uses": -1}, "max_uses"), ({"amount_usd": "1", "max_uses": "2"}, "max_uses"),
    ({"amount_usd": "1", "max_uses": True}, "max_uses"), ({"amount_usd": "1", "max_uses": 10**7}, "max_uses"),
    ({"amount_usd": "1", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"amount_usd": "1", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
    ({"amount_usd": "1", "expires_at": "tomorrow"}, "expires_at"),
    ({"amount_usd": "1", "expires_at": 1893456000}, "expires_at"),
    ({"amount_usd": "1", "expires_at": "9999-12-31T23:59:59-14:00"}, "expires_at"),
    ({"amount_usd": "1", "code": "-bad"}, "code"), ({"amount_usd": "1", "code": "x" * 65}, "code"),
])
def test_invite_create_validation(money_stack: Coordinator, body: dict[str, Any], param: str) -> None:
    _error(_admin(money_stack).post("/v1/admin/invite-codes", json=body), 400, param)


def test_invite_routes_need_an_admin(money_stack: Coordinator) -> None:
    user = _signup(money_stack)
    _error(user.http.post("/v1/admin/invite-codes", json={"amount_usd": "1"}), 403)
    _error(user.http.get("/v1/admin/invite-codes"), 403)
    _error(user.http.request("DELETE", "/v1/admin/invite-codes", json={"code": "X"}), 403)


def test_concurrent_redemption_of_the_last_use(money_stack: Coordinator) -> None:
    admin = _admin(money_stack)
    users = [_signup(money_stack) for _ in range(12)]
    code = admin.post("/v1/admin/invite-codes", json={"amount_usd": "2.00"}).json()["code"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda u: u.http.post("/v1/invite/redeem", json={"code": code}), users))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 11
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 400} == {"invite_exhausted"}
    assert sorted(u.balance()[0] for u in users) == [0] * 11 + [2_000_000]


# --- referrals ---------------------------------------------------------------------------------------


def test_referrals(money_stack: Coordinator) -> None:
    alice, bob = _signup(money_stack), _signup(money_stack)
    _error(alice.http.get("/v1/referral/stats"), 404)
    _error(alice.http.get("/v1/referral/info"), 404)
    code = "AL-" + uuid.uuid4().hex[:6].upper()
    made = alice.http.post("/v1/referral/register", json={"code": code.lower()})
    assert made.status_code == 200, made.text
    assert set(made.json()) == {"code", "share_percent", "message"}
    assert made.json()["code"] == code and made.json()["share_percent"] == 20
    assert "earn nothing" in made.json()["message"]  # the default platform fee is 0%
    again = alice.http.post("/v1/referral/register", json={"code": "SOMETHING-ELSE"}).json()
    assert again["code"] == code
    taken = _error(bob.http.post("/v1/referral/register", json={"code": code}), 400, "code")
    assert taken["code"] == "referral_error" and "taken" in taken["message"]
    for bad in ("ab", "-abc", "a" * 21, "a_b"):
        invalid = _error(bob.http.post("/v1/referral/register", json={"code": bad}), 400)
        assert invalid["code"] == "referral_error"

    assert "own" in _error(alice.http.post("/v1/referral/apply", json={"code": code}), 400)["message"]
    assert "unknown" in _error(bob.http.post("/v1/referral/apply", json={"code": "NOBODY-X"}), 400)["message"]
    applied = bob.http.post("/v1/referral/apply", json={"code": code.lower()})
    assert applied.status_code == 200, applied.text
    assert applied.json()["status"] == "applied" and applied.json()["code"] == code
    assert set(applied.json()) == {"status", "code", "message"}
    twice = _error(bob.http.post("/v1/referral/apply", json={"code": code}), 400)
    assert twice["code"] == "referral_error" and "already" in twice["message"]

    _grant(_admin(money_stack), "credit", {"email": alice.email, "amount_usd": "1.5"})
    stats = alice.http.get("/v1/referral/stats").json()
    assert stats == {"code": code, "share_percent": 20, "total_referred": 1, "total_rewards_micro_usd": 0,
                     "total_rewards_usd": "0.000000", "balance_micro_usd": 1_500_000,
                     "balance_usd": "1.500000"}
    assert alice.http.get("/v1/referral/info").json() == {"code": code, "share_percent": 20,
                                                          "referred_by": None}
    bob_code = "BOB-" + uuid.uuid4().hex[:6].upper()
    assert bob.http.post("/v1/referral/register", json={"code": bob_code}).status_code == 200
    assert bob.http.get("/v1/referral/info").json()["referred_by"] == code

    # Session routes: an API key is refused.
    key = bob.http.post("/v1/auth/keys", json={}).json()["api_key"]
    for method, path in (("POST", "/v1/referral/register"), ("POST", "/v1/referral/apply"),
                         ("GET", "/v1/referral/stats"), ("GET", "/v1/referral/info")):
        refused = httpx.request(method, f"{money_stack.base_url}{path}", json={"code": "X-Y-Z"},
                                headers={"authorization": f"Bearer {key}"})
        assert _error(refused, 403)["type"] == "forbidden"


def test_concurrent_applies_over_http(money_stack: Coordinator) -> None:
    target = _signup(money_stack)
    referrers = [_signup(money_stack) for _ in range(6)]
    codes = []
    for i, referrer in enumerate(referrers):
        code = f"R{i}-" + uuid.uuid4().hex[:6].upper()
        assert referrer.http.post("/v1/referral/register", json={"code": code}).status_code == 200
        codes.append(code)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda c: target.http.post("/v1/referral/apply", json={"code": c}),
                                codes * 2))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 11


# --- rate limits and the audit ----------------------------------------------------------------------


def test_financial_rate_limit(limited_stack: Coordinator) -> None:
    base = limited_stack.base_url
    signups = [httpx.post(f"{base}/v1/auth/signup",
                          json={"email": f"rl-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD})
               for _ in range(4)]
    assert [s.status_code for s in signups] == [201, 201, 201, 429]
    refused = signups[-1]
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    retry = int(refused.headers["retry-after"])
    reset = int(refused.headers["x-ratelimit-reset"])
    assert 1 <= retry <= 15 and time.time() < reset <= time.time() + 16
    user = User(limited_stack, signups[0].json())
    # Per account: this user's own allowance is untouched by the sign-ups from its address.
    keys = [user.http.post("/v1/auth/keys", json={}) for _ in range(4)]
    assert [k.status_code for k in keys] == [200, 200, 200, 429]
    assert int(keys[-1].headers["retry-after"]) >= 1 and "x-ratelimit-reset" in keys[-1].headers
    # The same account's allowance is shared by all financial routes, whatever the credential.
    assert _error(user.http.post("/v1/invite/redeem", json={"code": "NOPE"}), 429)["type"] == \
        "rate_limit_exceeded"
    other = User(limited_stack, signups[1].json())
    registered = other.http.post("/v1/referral/register", json={"code": "OTHER-" + uuid.uuid4().hex[:4]})
    assert registered.status_code == 200
    # The admin key is never limited.
    admin = _admin(limited_stack)
    for _ in range(6):
        assert _grant(admin, "credit", {"email": other.email, "amount_usd": "1"}).status_code == 200
    made = [admin.post("/v1/admin/invite-codes", json={"amount_usd": "1"}).status_code for _ in range(5)]
    assert made == [201] * 5
    # Reads are not financial.
    for _ in range(5):
        assert user.http.get("/v1/me").status_code == 200


def test_ledger_audit_agrees(money_stack: Coordinator) -> None:
    """Last in the module: every movement above left the ledger and the balances in agreement."""
    assert _cli(["admin", "audit"], money_stack.env) == "ledger and balances agree"
