"""The media routes' bounds on what uploads make the coordinator hold (coordinator/api/media.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from darkbloom.coordinator.api.bodies import read_body
from darkbloom.coordinator.api.media import COPIES_HELD, MAX_UPLOADS_PER_ACCOUNT, MediaGate
from darkbloom.errors import NoProviderAvailable, TooManyRequests


def test_an_account_has_a_few_uploads_arriving_at_once() -> None:
    gate = MediaGate()
    for _ in range(MAX_UPLOADS_PER_ACCOUNT):
        gate.arriving("a")
    with pytest.raises(TooManyRequests):
        gate.arriving("a")
    gate.arriving("b")  # another account is not held up
    gate.arrived("a")
    gate.arriving("a")
    for _ in range(MAX_UPLOADS_PER_ACCOUNT):
        gate.arrived("a")
    assert "a" not in gate.uploading


def test_read_uploads_share_a_memory_budget() -> None:
    gate = MediaGate(budget=10 * COPIES_HELD)
    first = gate.take(6)
    with pytest.raises(NoProviderAvailable) as busy:
        gate.take(6)
    assert busy.value.status_code == 503 and busy.value.headers == {"Retry-After": "1"}
    gate.give_back(first)
    assert gate.take(6) == 6 * COPIES_HELD
    big = MediaGate(budget=1)
    assert big.take(1000)  # one upload alone always gets in, whatever its size


def _request(receive: Any) -> Request:
    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)


async def test_an_upload_that_goes_quiet_times_out() -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    with pytest.raises(TimeoutError):
        await read_body(_request(receive), 100, idle_s=0.05)


async def test_a_steady_upload_is_read_whole() -> None:
    parts = [b"a" * 10, b"b" * 10, b""]

    async def receive() -> dict[str, Any]:
        body = parts.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    assert await read_body(_request(receive), 100, idle_s=5) == b"a" * 10 + b"b" * 10
