"""The rate-limit headers' formats (OpenAI's Go durations, Anthropic's RFC 3339 times), the Redis
settings, and limits kept in the machine's Redis: shared by every RateLimits with the same prefix,
apart under another, and failing open to this process's own counts when Redis does not answer."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
from pydantic import ValidationError

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api import ratelimit
from darkbloom.coordinator.api.ratelimit import (
    FINANCIAL,
    INFERENCE,
    RateLimitExceeded,
    RateLimits,
    Standing,
    anthropic_headers,
    dialect_headers,
    go_duration,
    openai_headers,
    redis_storage_uri,
    rfc3339,
)

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (0.0004, "0s"), (0.012, "12ms"), (0.9994, "999ms"), (0.9996, "1s"),
    (1, "1s"), (1.5, "1.5s"), (8.64, "8.64s"), (15, "15s"), (60, "1m0s"), (90.25, "1m30.25s"),
    (360, "6m0s"), (3600, "1h0m0s"), (3723, "1h2m3s"), (86400, "24h0m0s"),
])
def test_openai_reset_is_a_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_anthropic_reset_is_rfc3339_utc_rounded_up() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_900_000_000.01) == "2030-03-17T17:46:41Z"
    assert rfc3339(1_900_000_001) == "2030-03-17T17:46:41Z"


def test_each_dialect_gets_its_own_names() -> None:
    standing = Standing(limit=10, remaining=4, reset_at=1_900_000_006.0)
    assert openai_headers(standing, 1_900_000_000.0) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "6s"}
    assert anthropic_headers(standing) == {
        "anthropic-ratelimit-requests-limit": "10", "anthropic-ratelimit-requests-remaining": "4",
        "anthropic-ratelimit-requests-reset": "2030-03-17T17:46:46Z"}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/auth/keys"):
        assert dialect_headers(standing, path, 1_900_000_000.0) == openai_headers(standing, 1_900_000_000.0)
    assert dialect_headers(standing, "/v1/messages", 0) == anthropic_headers(standing)


@pytest.mark.parametrize(("url", "uri"), [
    ("redis://127.0.0.1:6379/0", "async+redis://127.0.0.1:6379/0"),
    ("rediss://:pw@cache.example:6380/2", "async+rediss://:pw@cache.example:6380/2"),
    ("REDIS://h", "async+redis://h"),
    ("unix:///run/redis.sock?db=1", "async+redis+unix:///run/redis.sock?db=1"),
])
def test_redis_urls_map_to_limits_async_storage(url: str, uri: str) -> None:
    assert redis_storage_uri(url) == uri


@pytest.mark.parametrize("url", ["memcached://h:11211", "127.0.0.1:6379", "http://h", "async+redis://h"])
def test_other_urls_are_refused_at_startup(url: str) -> None:
    with pytest.raises(ValidationError, match="DARKBLOOM_REDIS_URL"):
        CoordinatorSettings(DARKBLOOM_REDIS_URL=url)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="DARKBLOOM_REDIS_URL"):
        redis_storage_uri(url)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = CoordinatorSettings()
    assert (defaults.redis_url, defaults.redis_prefix, defaults.rate_limit_exempt_accounts) == (
        None, "darkbloom", [])
    assert (defaults.inference_rate_per_s, defaults.inference_burst) == (1.0, 10)
    assert (defaults.financial_rate_per_s, defaults.financial_burst) == (0.2, 3)
    monkeypatch.setenv("DARKBLOOM_REDIS_URL", REDIS)
    monkeypatch.setenv("DARKBLOOM_REDIS_PREFIX", "cluster-a")
    monkeypatch.setenv("DARKBLOOM_RATE_LIMIT_EXEMPT_ACCOUNTS", '["local", "ci"]')
    settings = CoordinatorSettings()
    assert (settings.redis_url, settings.redis_prefix) == (REDIS, "cluster-a")
    assert settings.rate_limit_exempt_accounts == ["local", "ci"]
    limits = RateLimits.from_settings(settings)
    assert limits.shared and limits.exempt == frozenset({"local", "ci"})
    assert not RateLimits.from_settings(defaults).shared
    monkeypatch.setenv("DARKBLOOM_REDIS_PREFIX", "a b:c")  # a namespace, not a pattern
    with pytest.raises(ValidationError):
        CoordinatorSettings()


def _limits(prefix: str, url: str = REDIS) -> RateLimits:
    settings = CoordinatorSettings(DARKBLOOM_REDIS_URL=url, redis_prefix=prefix,  # type: ignore[call-arg]
                                   inference_rate_per_s=1.0, inference_burst=3)
    return RateLimits.from_settings(settings)


async def test_coordinators_with_one_prefix_share_an_allowance() -> None:
    prefix = "test-" + uuid.uuid4().hex
    one, two, elsewhere = _limits(prefix), _limits(prefix), _limits(prefix + "-other")
    account = ("account", "acct-" + uuid.uuid4().hex)
    first = await one.hit(INFERENCE, *account)
    assert first is not None and (first.limit, first.remaining) == (3, 2)
    second = await two.hit(INFERENCE, *account)
    assert second is not None and second.remaining == 1
    await one.hit(INFERENCE, *account)
    with pytest.raises(RateLimitExceeded) as refused:
        await two.hit(INFERENCE, *account, path="/v1/messages")
    assert refused.value.tier == INFERENCE and refused.value.status_code == 429
    assert refused.value.headers is not None
    assert 1 <= int(refused.value.headers["retry-after"]) <= 3
    assert refused.value.headers["anthropic-ratelimit-requests-remaining"] == "0"
    # Another prefix (another network, another test run) counts on its own.
    assert await elsewhere.hit(INFERENCE, *account) is not None
    # So does another tier.
    assert await one.hit(FINANCIAL, *account) is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_fails_open_to_this_process(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, "darkbloom.coordinator.api.ratelimit")
    limits = _limits("test-down", f"redis://:hunter2@127.0.0.1:{_closed_port()}/0")
    account = ("account", "acct-down")
    for remaining in (2, 1, 0):  # still limited, by this process's own counts
        standing = await limits.hit(INFERENCE, *account)
        assert standing is not None and standing.remaining == remaining
    with pytest.raises(RateLimitExceeded):
        await limits.hit(INFERENCE, *account)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "Redis did not answer" in warnings[0]  # once per retry period
    assert "hunter2" not in caplog.text
    # After the retry period it tries Redis again (and warns again while it is still down).
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_S", 0.0)
    limits._shared_down_until = 0.0
    with pytest.raises(RateLimitExceeded):
        await limits.hit(INFERENCE, *account)
    assert len(caplog.records) == 2
