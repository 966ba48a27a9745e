"""The provider dashboard and Link device pages over plain HTTP, on SQLite and PostgreSQL: what
they read from the stores (a linked token no machine has used, Stripe off) renders, and a code
carried in /link's URL survives signing in and is only ever shown escaped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import Coordinator

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def coordinator(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    workdir = tmp_path_factory.mktemp(f"console-providers-{request.param}")
    name = None
    if request.param == "postgresql":
        name, database = fresh_postgres_database()
    else:
        database = f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    started = Coordinator(workdir, database_url=database).start()
    try:
        yield started
    finally:
        started.stop()
        if name:
            drop_postgres_database(name)


@contextmanager
def _signed_up(coordinator: Coordinator) -> Iterator[httpx.Client]:
    """A client holding a new account's session cookie, sending its CSRF token as the console does."""
    with httpx.Client(base_url=coordinator.base_url, timeout=30) as http:
        answer = http.post("/v1/auth/signup", json={
            "email": f"op-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD})
        assert answer.status_code == 201, answer.text
        http.headers["x-csrf-token"] = http.cookies["darkbloom_csrf"]
        yield http


def test_a_new_operator_sees_the_setup_guide_and_no_stripe(coordinator: Coordinator) -> None:
    with _signed_up(coordinator) as http:
        page = http.get("/providers")
    assert page.status_code == 200, page.text
    text = " ".join(page.text.split())  # as read: line breaks in the template are spaces
    assert "No machine is linked to this account yet" in page.text
    assert "Stripe is not configured on this coordinator" in text
    ws = coordinator.base_url.replace("http://", "ws://") + "/ws/provider"
    assert f"darkbloom login --coordinator {ws}" in text
    assert f"darkbloom start --coordinator {ws}" in text
    assert "pip install darkbloom" in text


def test_a_linked_token_is_listed_until_revoked(coordinator: Coordinator) -> None:
    with _signed_up(coordinator) as http:
        code = http.post("/v1/device/code").json()
        assert http.post("/v1/device/approve", json={"user_code": code["user_code"]}).status_code == 200
        assert http.post("/v1/device/token", json={"device_code": code["device_code"]}) \
            .json()["status"] == "authorized"
        page = http.get("/providers")
        assert page.status_code == 200
        text = " ".join(page.text.split())
        assert "never seen" in text and "linked, but no machine has connected" in text
        token = http.get("/v1/me/provider-tokens").json()["tokens"][0]
        assert f'data-revoke="{token["id"]}"' in page.text and token["prefix"] in page.text
        revoked = http.request("DELETE", "/v1/me/provider-tokens", json={"id": token["id"]})
        assert revoked.status_code == 200, revoked.text
        page = http.get("/providers")
    assert token["prefix"] not in page.text and "No linked devices" in page.text


def test_link_keeps_the_code_through_sign_in_and_escapes_it(coordinator: Coordinator) -> None:
    with httpx.Client(base_url=coordinator.base_url, timeout=30) as stranger:
        away = stranger.get("/link?code=abcd-efgh", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/signin?next=/link%3Fcode%3Dabcd-efgh"
    with _signed_up(coordinator) as http:
        page = http.get("/link", params={"code": " abcd-efgh "})
        assert 'value="ABCD-EFGH"' in page.text
        hostile = http.get("/link", params={"code": '"><script>x</script>'})
        assert hostile.status_code == 200
        assert "<script>x" not in hostile.text and "&#34;&gt;&lt;SCRIPT&gt;" in hostile.text
        too_long = http.get("/link", params={"code": "A" * 5000})
        assert too_long.status_code == 200 and 'value=""' in too_long.text
