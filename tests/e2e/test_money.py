"""Money end to end, through a real coordinator, a real provider on llama.cpp and a real database
(SQLite and PostgreSQL): every dialect charges what its usage says and the provider earns it; 402
comes before any work in the caller's dialect; a stream the consumer cuts is charged for what it
got; a provider killed mid-stream or a full queue costs nothing; self-route is free."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from darkbloom.coordinator.money import request_cost
from darkbloom.inference.catalog import DEFAULT_MODEL
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import MODEL, OPERATOR, Coordinator, Provider, _cli

HI = [{"role": "user", "content": "Say hello."}]
LONG = [{"role": "user", "content": "Write a very long essay about the history of the sea."}]


def cost_of(prompt: int, completion: int) -> int:
    return request_cost(prompt, completion, DEFAULT_MODEL.input_price, DEFAULT_MODEL.output_price)


class Money:
    """A stack with a funded consumer, an operator whose provider serves it, and a broke account."""

    def __init__(self, coordinator: Coordinator, provider: Provider) -> None:
        self.coordinator, self.provider = coordinator, provider
        self.operator_key = _cli(["keys", "create", "--account", OPERATOR], coordinator.env)
        self.broke_key = _cli(["keys", "create", "--account", "broke"], coordinator.env)

    def balance(self, key: str | None = None) -> int:
        answer = httpx.get(f"{self.coordinator.base_url}/v1/payments/balance", timeout=10,
                           headers={"Authorization": f"Bearer {key or self.coordinator.api_key}"})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["balance_micro_usd"])

    def usage(self, key: str | None = None) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.coordinator.base_url}/v1/payments/usage", timeout=10,
                           headers={"Authorization": f"Bearer {key or self.coordinator.api_key}"})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["usage"])

    def earnings(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.coordinator.base_url}/v1/provider/account-earnings?limit=1000",
                           timeout=10, headers={"Authorization": f"Bearer {self.operator_key}"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def settled(self, count: int, key: str | None = None, timeout: float = 10) -> list[dict[str, Any]]:
        """Usage rows once ``count`` exist (a stream is settled as its last byte goes out)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.usage(key)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def audit(self) -> None:
        self.coordinator.audit()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def money(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Money]:
    database, name = None, None
    if request.param == "postgresql":
        name, database = fresh_postgres_database()
    coordinator = Coordinator(tmp_path_factory.mktemp(f"money-{request.param}"), database_url=database,
                              queue_max_per_model=1, queue_timeout_s=2).start()
    provider = Provider(coordinator).start()
    try:
        yield Money(coordinator, provider)
    finally:
        provider.stop()
        coordinator.stop()
        if name:
            drop_postgres_database(name)


def test_every_dialect_is_charged_its_usage_and_the_operator_earns_it(money: Money) -> None:
    before, earned_before = money.balance(), money.earnings()["total_micro_usd"]
    client = money.coordinator.client()
    expected = []
    chat = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8)
    assert chat.usage is not None
    expected.append(cost_of(chat.usage.prompt_tokens, chat.usage.completion_tokens))
    text = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert text.usage is not None
    expected.append(cost_of(text.usage.prompt_tokens, text.usage.completion_tokens))
    resp = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8)
    assert resp.usage is not None
    expected.append(cost_of(resp.usage.input_tokens, resp.usage.output_tokens))
    claude = anthropic.Anthropic(base_url=money.coordinator.base_url, api_key=money.coordinator.api_key,
                                 max_retries=0)
    message = claude.messages.create(model=MODEL, max_tokens=8, messages=HI)  # type: ignore[arg-type]
    expected.append(cost_of(message.usage.input_tokens, message.usage.output_tokens))
    streamed = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, stream=True,
                                              stream_options={"include_usage": True})
    last = [chunk for chunk in streamed][-1]
    assert last.usage is not None
    expected.append(cost_of(last.usage.prompt_tokens, last.usage.completion_tokens))
    rows = money.settled(len(expected))[:len(expected)]
    assert [row["cost_micro_usd"] for row in reversed(rows)] == expected
    assert all(row["status"] == "completed" and not row["self_routed"] for row in rows)
    assert all(row["job_id"] == row["request_id"] for row in rows)
    assert money.balance() == before - sum(expected)
    # The platform fee is 0 by default (alpha): the operator earns every micro-dollar, withdrawable.
    earnings = money.earnings()
    assert earnings["total_micro_usd"] - earned_before == sum(expected)
    assert {e["job_id"] for e in earnings["earnings"]} >= {row["request_id"] for row in rows}
    assert earnings["withdrawable_balance_micro_usd"] == earnings["total_micro_usd"]
    money.audit()


def test_402_comes_before_any_work_in_each_dialect(money: Money) -> None:
    served = money.provider.log_text().count("accepted")
    broke = openai.OpenAI(base_url=f"{money.coordinator.base_url}/v1", api_key=money.broke_key,
                          max_retries=0)
    for call in (
        lambda: broke.chat.completions.create(model=MODEL, messages=HI, max_tokens=8),
        lambda: broke.chat.completions.create(model=MODEL, messages=HI, max_tokens=8, stream=True),
        lambda: broke.completions.create(model=MODEL, prompt="Hi", max_tokens=8),
        lambda: broke.responses.create(model=MODEL, input="Hi", max_output_tokens=8),
    ):
        with pytest.raises(openai.APIStatusError) as info:
            call()
        assert info.value.status_code == 402
        error = info.value.response.json()["error"]
        assert error["type"] == error["code"] == "insufficient_funds"
        assert "balance" in error["message"]
    claude = anthropic.Anthropic(base_url=money.coordinator.base_url, api_key=money.broke_key,
                                 max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model=MODEL, max_tokens=8, messages=HI)  # type: ignore[arg-type]
    assert refused.value.status_code == 402
    assert refused.value.response.json() == {"type": "error", "error": {
        "type": "billing_error", "message": refused.value.response.json()["error"]["message"]}}
    assert money.provider.log_text().count("accepted") == served  # no provider saw any of them
    assert money.balance(money.broke_key) == 0 and money.usage(money.broke_key) == []


def test_a_stream_the_consumer_cuts_is_charged_for_what_it_got(money: Money) -> None:
    before, rows_before = money.balance(), len(money.usage())
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{money.coordinator.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {money.coordinator.api_key}"},
            json={"model": MODEL, "messages": LONG, "max_tokens": 2000, "stream": True}) as response:
        lines = response.iter_lines()
        got = [line for _, line in zip(range(40), lines, strict=False) if line.startswith("data: ")]
    assert len(got) >= 10
    [row] = money.settled(rows_before + 1)[:1]
    assert row["status"] == "partial" and 0 < row["completion_tokens"] < 2000
    assert row["cost_micro_usd"] >= 100
    assert money.balance() == before - row["cost_micro_usd"]
    assert row["cost_micro_usd"] < cost_of(40, 2000)  # far less than the hold
    money.audit()


def _queued_behind_a_held_slot(money: Money) -> openai.APIStatusError | None:
    """Take the only slot with a long streamed answer, then ask again: the error the second
    request got after the 2 s queue timeout, or None if it was served (the holder's answer
    ended on its own within the timeout)."""
    http = httpx.Client(timeout=60)
    for _ in range(5):  # a slot still finishing an earlier test's answer: try again shortly
        holder = http.send(http.build_request(
            "POST", f"{money.coordinator.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {money.coordinator.api_key}"},
            json={"model": MODEL, "messages": LONG, "max_tokens": 3000, "stream": True}), stream=True)
        if holder.status_code == 200:
            break
        holder.read()
        holder.close()
        time.sleep(1)
    assert holder.status_code == 200
    lines = holder.iter_lines()  # kept: a dropped generator would close the stream
    next(lines)  # the only slot is taken
    try:
        money.coordinator.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
        return None
    except openai.APIStatusError as waited:
        return waited
    finally:
        holder.close()
        http.close()


def _settled(money: Money, before: int, rows_before: int) -> list[dict[str, Any]]:
    """The usage rows since ``rows_before`` once the balance shows all of them (settlement
    follows the end of a response), or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        rows = money.usage()
        new = rows[:len(rows) - rows_before]
        if money.balance() == before - sum(row["cost_micro_usd"] for row in new) \
                or time.monotonic() > deadline:
            return new
        time.sleep(0.05)


def test_a_full_queue_costs_nothing(money: Money) -> None:
    for _ in range(3):  # the holder's answer may end (EOS) within the queue timeout: again
        before, rows_before = money.balance(), len(money.usage())
        waited = _queued_behind_a_held_slot(money)
        new = _settled(money, before, rows_before)
        if waited is not None:
            break
    assert waited is not None and waited.status_code == 503
    # Only the holder, cut short, may be charged (what it was sent); the queued request not at all.
    assert len(new) <= 1 and all(row["status"] == "partial" for row in new)
    assert money.balance() == before - sum(row["cost_micro_usd"] for row in new)
    money.audit()


def test_self_route_is_free_and_needs_no_balance(money: Money) -> None:
    operator = openai.OpenAI(base_url=f"{money.coordinator.base_url}/v1", api_key=money.operator_key,
                             max_retries=0, default_headers={"X-Darkbloom-Route": "self"})
    before, earned = money.balance(money.operator_key), money.earnings()["total_micro_usd"]
    reply = operator.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert reply.choices[0].message.content is not None
    [row] = money.settled(1, money.operator_key)[:1]
    assert (row["self_routed"], row["cost_micro_usd"]) == (True, 0)
    assert money.balance(money.operator_key) == before
    assert money.earnings()["total_micro_usd"] == earned
    consumer = money.coordinator.client(default_headers={"X-Darkbloom-Route": "self"})
    with pytest.raises(openai.APIStatusError) as none_own:  # the consumer has no provider of its own
        consumer.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert none_own.value.status_code == 503
    assert none_own.value.response.json()["error"]["code"] == "no_own_provider"
    with pytest.raises(openai.BadRequestError):
        money.coordinator.client(default_headers={"X-Darkbloom-Route": "everyone"}).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=4)


def test_a_provider_killed_mid_stream_is_refunded_in_full(money: Money) -> None:
    """Last in the module: it kills the provider (and starts another for nothing after it)."""
    before, rows_before = money.balance(), len(money.usage())
    earned = money.earnings()["total_micro_usd"]
    stream = money.coordinator.client().chat.completions.create(
        model=MODEL, messages=LONG, max_tokens=3000, stream=True)
    chunks = iter(stream)
    for _ in range(5):
        next(chunks)
    money.provider.kill()
    with pytest.raises(openai.APIError):
        for _ in chunks:
            pass
    time.sleep(0.5)
    assert money.balance() == before
    assert len(money.usage()) == rows_before
    assert money.earnings()["total_micro_usd"] == earned
    money.audit()


def test_holds_a_dead_coordinator_left_are_refunded_when_it_starts(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path).start()
    provider = Provider(coordinator).start()
    try:
        money = Money(coordinator, provider)
        before = money.balance()
        stream = coordinator.client().chat.completions.create(
            model=MODEL, messages=LONG, max_tokens=3000, stream=True)
        chunks = iter(stream)
        next(chunks)
        assert coordinator.proc is not None
        coordinator.proc.kill()  # dies holding the reservation
        coordinator.proc.wait()
        coordinator.start()
        assert money.balance() == before
        assert "refunded 1 reservation" in coordinator.log_text()
        money.audit()
    finally:
        provider.stop()
        coordinator.stop()


def test_balance_routes_answer_in_the_spec_shapes(money: Money) -> None:
    key = {"Authorization": f"Bearer {money.coordinator.api_key}"}
    base = money.coordinator.base_url
    balance = httpx.get(f"{base}/v1/payments/balance", headers=key).json()
    assert set(balance) == {"balance_micro_usd", "balance_usd", "withdrawable_micro_usd", "withdrawable_usd"}
    assert balance["balance_usd"] == f"{balance['balance_micro_usd'] // 10**6}." \
        f"{balance['balance_micro_usd'] % 10**6:06d}"
    wallet = httpx.get(f"{base}/v1/billing/wallet/balance", headers=key).json()
    assert wallet == {"credit_balance_micro_usd": balance["balance_micro_usd"]}
    for bad in ("limit=0", "limit=1001", "limit=x", "before=yesterday", "before=2026-01-01T00:00:00"):
        answer = httpx.get(f"{base}/v1/payments/usage?{bad}", headers=key)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["type"] == "invalid_request_error"
    page = httpx.get(f"{base}/v1/payments/usage?limit=1", headers=key).json()["usage"]
    if page:
        older = httpx.get(f"{base}/v1/payments/usage", headers=key,
                          params={"limit": 1000, "before": page[0]["timestamp"]}).json()["usage"]
        assert all(row["timestamp"] <= page[0]["timestamp"] for row in older)
    assert httpx.get(f"{base}/v1/provider/earnings?wallet=x").status_code == 404
    prices = httpx.get(f"{base}/v1/pricing").json()
    entry = next(p for p in prices["prices"] if p["model"] == MODEL)
    assert (entry["input_price"], entry["input_usd"]) == (DEFAULT_MODEL.input_price, "$0.0500")
    assert prices["minimum_charge_micro_usd"] == 100 and prices["platform_fee_bps"] == 0
