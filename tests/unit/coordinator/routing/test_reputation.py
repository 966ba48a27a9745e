"""Reputation (protocol.md §7): the score's parts, lifetime counters from heartbeats, and the
records' life across sessions and the store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.reputation import DAY_S, Record, Reputations, key_of
from darkbloom.protocol.frames import Stats

MakeProvider = Callable[..., ProviderConn]


def test_a_new_provider_scores_one_half() -> None:
    assert Record("k").score() == pytest.approx(0.5)


def test_score_weights_its_four_parts() -> None:
    now = 1_000_000_000.0
    r = Record("k")
    for _ in range(3):
        r.succeeded(500.0)
    r.failed()
    r.challenged(True)
    r.uptime_hours = {int(now) // 3600: 3600.0 * 6}  # clamped per bucket when fed, not here
    expected = 0.4 * 0.75 + 0.3 * 0.25 + 0.2 * 1.0 + 0.1 * 1.0
    assert r.score(now) == pytest.approx(expected)


def test_response_factor_is_linear_between_one_and_ten_seconds() -> None:
    r = Record("k")
    r.succeeded(5_500.0)
    assert r.score() == pytest.approx(0.4 + 0.15 + 0.1 + 0.1 * 0.5)
    r.succeeded(50_000.0)  # average 27.75 s: factor 0
    assert r.score() == pytest.approx(0.4 + 0.15 + 0.1)


def test_timeouts_are_failures_and_counted() -> None:
    r = Record("k")
    r.failed(timeout=True)
    r.failed()
    assert (r.jobs_failed, r.timeouts) == (2, 1)


def test_heartbeats_feed_counters_by_delta_and_survive_a_restart() -> None:
    r = Record("k")
    r.heartbeat(Stats(requests_served=5, tokens_generated=100), None, 5)
    r.heartbeat(Stats(requests_served=7, tokens_generated=160), 5.0, 5)
    assert (r.requests_served, r.tokens_generated) == (7, 160)
    r.heartbeat(Stats(requests_served=2, tokens_generated=30), 5.0, 5)  # the process restarted
    assert (r.requests_served, r.tokens_generated) == (9, 190)
    r.heartbeat(Stats(requests_served=2, tokens_generated=30), 5.0, 5)
    assert (r.requests_served, r.tokens_generated) == (9, 190)


def test_uptime_counts_short_gaps_in_a_rolling_day() -> None:
    now = 1_000_000_000.0
    r = Record("k")
    r.heartbeat(Stats(), 5.0, 5, now=now)
    r.heartbeat(Stats(), 60.0, 5, now=now)  # over three intervals: an outage, not uptime
    assert r.uptime_ratio(now) == pytest.approx(5 / DAY_S)
    assert r.uptime_ratio(now + DAY_S + 3600) is None  # a day later it has aged out


def test_measured_decode_speed_is_smoothed_and_clamped() -> None:
    r = Record("k")  # timed from dispatch: first chunk at 0 ms here, so decode_s is the whole answer
    r.succeeded(0.0, completion_tokens=100, decode_s=1.0)
    assert r.decode_tps == pytest.approx(100.0)
    r.succeeded(0.0, completion_tokens=100, decode_s=0.5)
    assert r.decode_tps == pytest.approx(0.3 * 200 + 0.7 * 100)
    r.succeeded(0.0, completion_tokens=4, decode_s=0.001)  # too short to time
    assert r.decode_tps == pytest.approx(130.0)
    r = Record("k")
    r.succeeded(0.0, completion_tokens=10_000, decode_s=0.01)
    assert r.decode_tps == 500.0


def test_key_is_the_identity_then_the_token(make_provider: MakeProvider) -> None:
    p = make_provider("sess")
    assert key_of(p) == "session:sess"
    p.token_id = "tok"
    assert key_of(p) == "token:tok"
    p.identity_key = "IDKEY"
    assert key_of(p) == "IDKEY"


async def test_records_load_once_and_flush_what_changed(make_provider: MakeProvider) -> None:
    stored: dict[str, Record] = {"IDKEY": Record("IDKEY", jobs_succeeded=9, decode_tps=42.0,
                                                 dirty=False)}
    loads: list[str] = []
    saved: list[list[str]] = []

    async def load(key: str) -> Record | None:
        loads.append(key)
        return stored.get(key)

    async def save(records: list[Record]) -> None:
        saved.append(sorted(r.key for r in records))

    book = Reputations(load, save)
    a, b = make_provider("a"), make_provider("b")
    a.identity_key = b.identity_key = "IDKEY"
    a.last_pass = b.last_pass = 1.0  # both proved the key (an unproven session has its own record)
    await book.attach(a)
    await book.attach(b)
    assert loads == ["IDKEY"]
    assert a.measured_decode_tps == 42.0
    await book.flush()
    assert saved == []  # nothing changed yet
    book.failed(a)
    assert book.of(b).jobs_failed == 1  # one record per identity
    book.detach(a)
    book.detach(b)
    await book.flush()
    assert saved == [["IDKEY"]]
    assert list(book.records()) == []  # written and nobody connected: forgotten


async def test_a_failing_store_keeps_changes_for_the_next_flush(make_provider: MakeProvider) -> None:
    calls = 0

    async def save(records: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database away")

    book = Reputations(None, save)
    p = make_provider()
    p.token_id = "t"
    await book.attach(p)
    book.failed(p)
    await book.flush()
    assert book.of(p).dirty
    await book.flush()
    assert not book.of(p).dirty and calls == 2
