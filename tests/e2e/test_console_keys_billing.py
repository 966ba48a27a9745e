"""The API keys and Billing pages over plain HTTP, on SQLite and PostgreSQL, on a coordinator
without Stripe: buying is shown off; a thousand usage rows render as the newest fifty with a
"Load more" cursor the usage API continues from; stored text (key labels, model names) is
escaped; key secrets never appear."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from darkbloom.coordinator.store.db import make_engine, make_sessionmaker
from darkbloom.coordinator.store.tables import UsageRecord
from darkbloom.coordinator.store.usage import DAY_S
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import Coordinator

PASSWORD = "correct horse battery staple"
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bare(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Coordinator, str]]:
    workdir = tmp_path_factory.mktemp(f"console-{request.param}")
    pg_name, url = fresh_postgres_database() if request.param == "postgresql" else (None, None)
    coordinator = Coordinator(workdir, database_url=url).start()
    database_url = url or f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    try:
        yield coordinator, database_url
    finally:
        coordinator.stop()
        if pg_name:
            drop_postgres_database(pg_name)


def _signed_up(coordinator: Coordinator) -> tuple[httpx.Client, str]:
    """A browser-like client (cookies, CSRF header) of a new account, and the account's id."""
    http = httpx.Client(base_url=coordinator.base_url, timeout=30)
    answer = http.post("/v1/auth/signup", json={"email": f"c-{uuid.uuid4().hex[:10]}@example.com",
                                                "password": PASSWORD})
    assert answer.status_code == 201, answer.text
    http.headers["x-csrf-token"] = answer.json()["csrf_token"]
    return http, str(answer.json()["account_id"])


def _add_usage(database_url: str, rows: list[UsageRecord]) -> None:
    async def run() -> None:
        engine = make_engine(database_url)
        try:
            async with make_sessionmaker(engine).begin() as session:
                session.add_all(rows)
        finally:
            await engine.dispose()
    asyncio.run(run())


def _usage(account_id: str, at: datetime, n: int, model: str = "m") -> UsageRecord:
    return UsageRecord(request_id=f"u-{uuid.uuid4().hex[:16]}-{n}", account_id=account_id,
                       endpoint="/v1/chat/completions", model=model, prompt_tokens=n, completion_tokens=2,
                       cost_micro_usd=1_000, provider_payout_micro_usd=1_000, platform_fee_micro_usd=0,
                       referral_reward_micro_usd=0, status="completed", self_routed=False,
                       duration_ms=1.0, created_at=at)


def test_billing_without_stripe_says_buying_is_off(bare: tuple[Coordinator, str]) -> None:
    http, _ = _signed_up(bare[0])
    page = http.get("/billing")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "Buying credits is off on this coordinator" in page.text
    assert "<fieldset disabled>" in page.text
    assert http.post("/v1/billing/stripe/create-session", json={"amount_usd": "10.00"}).status_code == 503


def test_a_thousand_usage_rows_page_through_the_usage_api(bare: tuple[Coordinator, str]) -> None:
    coordinator, database_url = bare
    http, account_id = _signed_up(coordinator)
    today = int(time.time()) // DAY_S
    start = datetime.fromtimestamp((today - 13) * DAY_S, UTC)
    now = datetime.now(UTC)
    step = (now - start) / 1000
    rows = [_usage(account_id, start + step * n, n) for n in range(999)]
    rows.append(_usage(account_id, now - timedelta(microseconds=1), 999, model=HOSTILE))
    _add_usage(database_url, rows)
    began = time.perf_counter()
    page = http.get("/billing")
    took_ms = (time.perf_counter() - began) * 1000
    print(f"/billing with 1,000 usage rows: {took_ms:.0f} ms")  # measured in `make bench`
    assert page.status_code == 200
    html = page.text
    body = html[html.index('id="usage-body"'):html.index("</tbody>")]
    assert body.count("<tr>") == 50
    assert HOSTILE not in html and "&lt;img src=x onerror=" in html
    assert "$1.00 on 1000 requests in the last 14 days" in html
    assert len(re.findall(r"<rect ", html)) == 14
    cursor = re.search(r'id="usage-more"\s+data-before="([^"]+)"', html)
    assert cursor is not None and 'class="secondary hidden" id="usage-more"' not in html
    # "Load more" asks the API for what follows the page's last row: rows 51 to 100, none twice.
    first = http.get("/v1/payments/usage", params={"limit": 50}).json()["usage"]
    assert first[-1]["timestamp"] == cursor[1]
    following = http.get("/v1/payments/usage", params={"limit": 50, "before": cursor[1]}).json()["usage"]
    assert [row["prompt_tokens"] for row in following] == list(range(949, 899, -1))


def test_keys_page_shows_prefixes_and_escaped_labels_only(bare: tuple[Coordinator, str]) -> None:
    http, _ = _signed_up(bare[0])
    made: dict[str, Any] = http.post("/v1/auth/keys", json={"label": HOSTILE}).json()
    page = http.get("/keys")
    assert page.status_code == 200
    assert made["prefix"] in page.text and made["api_key"] not in page.text
    assert HOSTILE not in page.text and "&lt;img src=x onerror=" in page.text
    assert f"{bare[0].base_url}/v1" in page.text  # the snippets' base URL
    assert page.text.count('data-action="revoke"') == 1
