"""Public network data end to end (api.md §9), through a real coordinator, a real provider on
llama.cpp and a real database (SQLite and PostgreSQL): requests made with the OpenAI SDK show in
/v1/stats (totals and the current minute), the provider is listed with its model, the operator
account is on the leaderboard under a pseudonym (never its id) that every coordinator on the
database agrees on, bad parameters are 400, and a storm of stats requests fails nothing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import CONSUMER, MODEL, OPERATOR, Coordinator, Provider, _cli

HI = [{"role": "user", "content": "Say hello."}]
PSEUDONYM = re.compile(r"^[a-z]+-[a-z]+-\d{4}$")
# Short caches, so the test sees its own requests without waiting out production TTLs.
CACHES = {"stats_cache_s": 1, "leaderboard_cache_s": 1, "network_totals_cache_s": 1}


class Stack:
    def __init__(self, coordinator: Coordinator, provider: Provider, database_url: str) -> None:
        self.coordinator, self.provider, self.database_url = coordinator, provider, database_url
        self.operator_key = _cli(["keys", "create", "--account", OPERATOR], coordinator.env)

    def get(self, path: str, base: str | None = None) -> httpx.Response:
        return httpx.get(f"{base or self.coordinator.base_url}{path}", timeout=30)

    def earnings(self) -> dict[str, Any]:
        """The operator's own view of what it earned (api.md §7), to check the public one by."""
        answer = httpx.get(f"{self.coordinator.base_url}/v1/provider/account-earnings?limit=1000",
                           timeout=10, headers={"Authorization": f"Bearer {self.operator_key}"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def until(self, path: str, done: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        """The route's answer once ``done`` holds (settlement runs after the response, and the
        answer is cached for a second)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.get(path)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            if done(body):
                return body
            assert time.monotonic() < deadline, f"{path} never got there: {body}"
            time.sleep(0.2)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"stats-{request.param}")
    name = None
    if request.param == "postgresql":
        name, database = fresh_postgres_database()
    else:
        database = f"sqlite+aiosqlite:///{(workdir / 'state' / 'coordinator.db').resolve()}"
    coordinator = Coordinator(workdir, database_url=database, **CACHES).start()
    provider = Provider(coordinator).start()
    try:
        yield Stack(coordinator, provider, database)
    finally:
        provider.stop()
        coordinator.stop()
        if name:
            drop_postgres_database(name)


def test_stats_count_the_requests_and_list_the_provider_with_its_model(stack: Stack) -> None:
    before = stack.get("/v1/stats").json()
    client = stack.coordinator.client()
    chat = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8)  # type: ignore[arg-type]
    streamed = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8,  # type: ignore[arg-type]
                                              stream=True, stream_options={"include_usage": True})
    last = [chunk for chunk in streamed][-1]
    assert chat.usage is not None and last.usage is not None
    prompt = chat.usage.prompt_tokens + last.usage.prompt_tokens
    completion = chat.usage.completion_tokens + last.usage.completion_tokens
    wanted = before["total_requests"] + 2
    after = stack.until("/v1/stats", lambda body: body["total_requests"] >= wanted)
    assert after["total_requests"] == wanted
    assert after["total_prompt_tokens"] - before["total_prompt_tokens"] == prompt
    assert after["total_completion_tokens"] - before["total_completion_tokens"] == completion
    assert after["total_tokens"] == after["total_prompt_tokens"] + after["total_completion_tokens"]
    assert after["avg_tokens_per_request"] == pytest.approx(after["total_tokens"] / wanted, abs=0.01)

    # Thirty one-minute buckets, zero-filled, the last one the current minute; the requests are
    # in the newest buckets (the current one, or the one before if the minute turned meanwhile).
    series = after["time_series"]
    assert len(series) == 30
    minutes = [int(datetime.strptime(b["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
               // 60 for b in series]
    assert minutes == list(range(minutes[0], minutes[0] + 30))
    assert minutes[-1] in (int(time.time()) // 60, int(time.time()) // 60 - 1)
    recent = series[-2:]
    assert sum(b["requests"] for b in series) == wanted
    assert sum(b["requests"] for b in recent) >= 2
    assert sum(b["total_tokens"] for b in series) == after["total_tokens"]
    assert any(b == {**b, "requests": 0, "total_tokens": 0} for b in series[:-2])  # zero-filled

    listing = stack.get("/v1/providers/attestation").json()["providers"]
    assert after["active_providers"] == 1 and len(after["providers"]) == 1
    provider = after["providers"][0]
    assert provider["id"] == listing[0]["provider_id"]  # the public session id, nothing more
    assert MODEL in provider["models"] and provider["status"] in ("online", "serving")
    assert provider["trust_level"] == listing[0]["trust_level"]
    assert provider["decode_tps"] > 0
    assert isinstance(provider["cpu_cores"], dict) and set(provider["cpu_cores"]) == {
        "total", "performance", "efficiency"}
    assert after["models"] == [{"id": MODEL, "providers": 1}]
    assert after["total_memory_gb"] == provider["memory_gb"]
    text = stack.get("/v1/stats").text
    assert f'"{OPERATOR}"' not in text and f'"{CONSUMER}"' not in text


def test_the_leaderboard_shows_the_operator_under_a_pseudonym(stack: Stack) -> None:
    jobs = stack.earnings()["count"]
    stack.coordinator.client().chat.completions.create(model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
    # The earnings row of that request lands with its settlement, after the response.
    deadline = time.monotonic() + 20
    while (earned := stack.earnings())["count"] <= jobs:
        assert time.monotonic() < deadline, "the request was never settled"
        time.sleep(0.2)
    assert earned["total_micro_usd"] > 0
    tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in earned["earnings"])
    board = stack.until("/v1/leaderboard?metric=earnings&window=24h",
                        lambda body: bool(body["entries"]) and body["entries"][0]["jobs"] == earned["count"])
    assert board["metric"] == "earnings" and board["window"] == "24h"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", board["updated_at"])
    (entry,) = board["entries"]  # one provider account earned
    assert entry == {"rank": 1, "pseudonym": entry["pseudonym"], "tokens": tokens,
                     "earnings_micro_usd": earned["total_micro_usd"], "jobs": earned["count"]}
    assert PSEUDONYM.match(entry["pseudonym"]) and OPERATOR not in entry["pseudonym"]
    for query in ("metric=tokens&window=7d", "metric=jobs&window=30d", "window=lifetime", "window=1d&limit=1",
                  "metric=earnings&window=all&limit=200"):
        other = stack.until(f"/v1/leaderboard?{query}", lambda body: bool(body["entries"])
                            and body["entries"][0]["jobs"] == earned["count"])
        assert other["entries"] == [entry], query
        assert f'"{OPERATOR}"' not in stack.get(f"/v1/leaderboard?{query}").text

    totals = stack.until("/v1/network/totals?window=24h", lambda body: body["jobs"] == earned["count"])
    assert {k: v for k, v in totals.items() if k != "updated_at"} == {
        "window": "24h", "earnings_micro_usd": earned["total_micro_usd"], "tokens": tokens,
        "jobs": earned["count"], "active_accounts": 1}
    assert stack.get("/v1/network/totals").json()["window"] == "all"


def test_every_coordinator_on_the_database_gives_the_same_pseudonym(stack: Stack, tmp_path: Path) -> None:
    """The HMAC secret lives in the database: a second coordinator (or this one restarted)
    names the operator the same way."""
    first = stack.until("/v1/leaderboard", lambda body: bool(body["entries"]))["entries"][0]
    second = Coordinator(tmp_path, database_url=stack.database_url, **CACHES).start()
    try:
        answer = stack.get("/v1/leaderboard", base=second.base_url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["entries"][0]["pseudonym"] == first["pseudonym"]
    finally:
        second.stop()


@pytest.mark.parametrize("query", [
    "/v1/leaderboard?metric=money", "/v1/leaderboard?window=2d", "/v1/leaderboard?limit=0",
    "/v1/leaderboard?limit=201", "/v1/leaderboard?limit=ten", "/v1/network/totals?window=1y",
])
def test_bad_parameters_are_400_in_openai_shape(stack: Stack, query: str) -> None:
    answer = stack.get(query)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] in ("metric", "window", "limit")


def test_a_stats_storm_fails_nothing_and_inference_still_answers(stack: Stack) -> None:
    """200 concurrent /v1/stats (and leaderboard) requests with an inference request among them:
    every one answers. (How many queries a storm costs is counted in the unit tests.)"""
    base = stack.coordinator.base_url

    async def storm() -> tuple[list[int], str]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
            calls = [http.get("/v1/stats") for _ in range(200)] + \
                    [http.get(f"/v1/leaderboard?limit={1 + i}") for i in range(50)]
            inference = stack.coordinator.async_client().chat.completions.create(
                model=MODEL, messages=HI, max_tokens=4)  # type: ignore[arg-type]
            *answers, chat = await asyncio.gather(*calls, inference)
        return [a.status_code for a in answers], chat.choices[0].finish_reason

    statuses, finish = asyncio.run(storm())
    assert statuses == [200] * 250
    assert finish in ("stop", "length")
    assert stack.coordinator.proc is not None and stack.coordinator.proc.poll() is None
