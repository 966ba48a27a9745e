"""Failover among several coordinators (docs/provider-failover.md), without sockets: the rotation
and its backoff, the settings that feed it, and the agent's loop over a scripted `_session`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from darkbloom.config import ProviderSettings
from darkbloom.protocol.frames import Registered
from darkbloom.provider.agent import CoordinatorRotation, FatalRejection, ProviderAgent, redact_url
from darkbloom.provider.engines.scripted import ScriptedEngine

A, B, C = (f"ws://10.0.0.{n}:8000/ws/provider" for n in (1, 2, 3))


def take(rotation: CoordinatorRotation, n: int) -> list[tuple[str, float]]:
    return [rotation.next() for _ in range(n)]


def test_one_url_keeps_the_single_coordinator_backoff() -> None:
    """protocol.md §9: at once, then 1 s doubling to 5 s."""
    rotation = CoordinatorRotation([A], 1.0, 5.0)
    assert [d for _, d in take(rotation, 6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    rotation.registered()
    assert [d for _, d in take(rotation, 3)] == [1.0, 2.0, 4.0]


def test_backoff_is_waited_once_per_cycle_not_per_url() -> None:
    rotation = CoordinatorRotation([A, B, C], 1.0, 5.0)
    assert take(rotation, 9) == [(A, 0.0), (B, 0.0), (C, 0.0),
                                 (A, 1.0), (B, 0.0), (C, 0.0),
                                 (A, 2.0), (B, 0.0), (C, 0.0)]


def test_after_a_registered_session_the_next_coordinator_comes_after_the_initial_wait() -> None:
    """A registered on A and A died: B next, 1 s later; the backoff grows again only after a
    whole cycle fails, and a registration anywhere resets it."""
    rotation = CoordinatorRotation([A, B, C], 1.0, 5.0)
    assert rotation.next() == (A, 0.0)
    rotation.registered()
    assert take(rotation, 4) == [(B, 1.0), (C, 0.0), (A, 0.0), (B, 2.0)]
    rotation.registered()
    assert take(rotation, 2) == [(C, 1.0), (A, 0.0)]


@pytest.mark.parametrize("dead", [0, 1, 2, 3])
def test_a_dead_coordinator_is_left_within_the_initial_backoff(dead: int) -> None:
    """The failover bound: after a session ends, every other URL is dialled within
    reconnect_initial_s (1 s by default) however many of them are down; only then can the
    backoff grow. With the default 5 s max this is what keeps failover well under 5 s."""
    urls = [f"ws://10.0.1.{n}/ws/provider" for n in range(5)]
    rotation = CoordinatorRotation(urls, 1.0, 5.0)
    rotation.next()
    rotation.registered()
    waited = 0.0
    for _ in range(dead + 1):  # `dead` of the others refuse, then one accepts
        _, delay = rotation.next()
        waited += delay
    assert waited == 1.0


def test_empty_list_is_refused() -> None:
    with pytest.raises(ValueError):
        CoordinatorRotation([], 1.0, 5.0)


def test_settings_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DARKBLOOM_PROVIDER_COORDINATOR_URLS", raising=False)
    monkeypatch.setenv("DARKBLOOM_PROVIDER_COORDINATOR_URL", A)
    assert ProviderSettings().coordinators == [A]  # the one-URL variable still works
    monkeypatch.setenv("DARKBLOOM_PROVIDER_COORDINATOR_URLS", f" {B}, ,{C},{B} ")
    assert ProviderSettings().coordinators == [B, C]  # the list wins; blanks and repeats dropped
    monkeypatch.delenv("DARKBLOOM_PROVIDER_COORDINATOR_URL")
    monkeypatch.delenv("DARKBLOOM_PROVIDER_COORDINATOR_URLS")
    assert ProviderSettings().coordinators == ["ws://127.0.0.1:8000/ws/provider"]


def test_settings_urls_from_repeated_options() -> None:
    """`serve --coordinator X --coordinator Y,Z` hands Typer's list straight over."""
    assert ProviderSettings(coordinator_urls=[A, f"{B},{C}"]).coordinators == [A, B, C]


@pytest.mark.parametrize("bad", ["http://h/ws/provider", "h:8000", "ws://", "ws://h:99999/x",
                                 "ws://h/" + "x" * 2100, ",".join(f"ws://h{n}/" for n in range(17)),
                                 ["ws://h/", 3]])
def test_settings_refuse_bad_urls(bad: object) -> None:
    with pytest.raises(ValidationError):
        ProviderSettings(coordinator_urls=bad)


def test_logged_urls_carry_no_userinfo_or_query() -> None:
    assert redact_url("wss://user:secret@coord.example:443/ws/provider?token=x#y") == \
        "wss://coord.example:443/ws/provider"
    assert redact_url("ws://[::1]:8000/ws/provider") == "ws://[::1]:8000/ws/provider"
    assert "secret" not in redact_url("ws://a:secret@h:bad/")


def _agent(tmp_path: Path, urls: list[str]) -> ProviderAgent:
    settings = ProviderSettings(coordinator_urls=urls, config_dir=tmp_path,
                                reconnect_initial_s=0.01, reconnect_max_s=0.04)
    return ProviderAgent(settings, ScriptedEngine([]))


async def test_agent_fails_over_in_order_one_session_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refuses, B registers and then drops, C refuses, A registers; then stop. Never two
    sessions open at once (each would count this provider's slots)."""
    agent = _agent(tmp_path, [A, B, C])
    stop = asyncio.Event()
    dialled: list[str] = []
    open_sessions = 0
    script = iter(["refuse", "register", "refuse", "register-and-stop"])

    async def session(stop_: asyncio.Event, url: str | None = None) -> None:
        nonlocal open_sessions
        open_sessions += 1
        try:
            assert open_sessions == 1
            assert url is not None
            dialled.append(url)
            step = next(script)
            await asyncio.sleep(0)
            if step == "refuse":
                raise ConnectionRefusedError
            agent.registered = Registered.model_construct(provider_id="p")
            if step == "register-and-stop":
                stop.set()
        finally:
            open_sessions -= 1

    monkeypatch.setattr(agent, "_session", session)
    await asyncio.wait_for(agent.run(stop), 5)
    assert dialled == [A, B, C, A]


async def test_a_fatal_rejection_stops_without_trying_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token is valid network-wide (one shared database): a 4001 from one coordinator is the
    answer of all of them, so the agent stops instead of cycling."""
    agent = _agent(tmp_path, [A, B])
    dialled: list[str] = []

    async def session(stop_: asyncio.Event, url: str | None = None) -> None:
        assert url is not None
        dialled.append(url)
        if url == A:
            raise ConnectionRefusedError
        raise FatalRejection("coordinator closed the connection (4001): provider token rejected")

    monkeypatch.setattr(agent, "_session", session)
    with pytest.raises(FatalRejection):
        await asyncio.wait_for(agent.run(asyncio.Event()), 5)
    assert dialled == [A, B]


async def test_stop_during_the_backoff_wait_ends_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ProviderSettings(coordinator_urls=[A], config_dir=tmp_path,
                                reconnect_initial_s=60, reconnect_max_s=60)
    agent = ProviderAgent(settings, ScriptedEngine([]))
    stop = asyncio.Event()
    dialled: list[str] = []

    async def session(stop_: asyncio.Event, url: str | None = None) -> None:
        assert url is not None
        dialled.append(url)
        asyncio.get_running_loop().call_later(0.05, stop.set)
        raise ConnectionRefusedError

    monkeypatch.setattr(agent, "_session", session)
    await asyncio.wait_for(agent.run(stop), 5)
    assert dialled == [A]
