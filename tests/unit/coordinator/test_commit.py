"""Committer.commit with a real scheduler and dispatcher: in standard mode a provider's 4xx
is a failed attempt, retried elsewhere, and its words never reach the consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.commit import Committer
from darkbloom.coordinator.dispatch import Dispatcher
from darkbloom.coordinator.prepare import Prepared
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import ANY, Scheduler
from darkbloom.errors import InvalidRequest, ProviderFailed
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol import decode
from darkbloom.protocol.frames import (
    COORDINATOR_FRAME_TYPES,
    InferenceError,
    InferenceRequest,
    coordinator_frame_adapter,
)

pytestmark = pytest.mark.timeout(10)
CANARY = "the provider's own words 51c2"


def _service(*providers: ProviderConn) -> tuple[Committer, Dispatcher]:
    scheduler = Scheduler(queue_max=4, queue_timeout_s=1)
    for p in providers:
        scheduler.add(p)
    dispatcher = Dispatcher(scheduler)
    settings = CoordinatorSettings(max_attempts=3, first_response_timeout_s=5)
    return Committer(settings, scheduler, dispatcher), dispatcher


def _prepared(prompt_tokens: int | None) -> Prepared:
    request = GenerationRequest(endpoint="/v1/chat/completions", model=DEFAULT_MODEL.id)
    return Prepared("/v1/chat/completions", b"{}", request, DEFAULT_MODEL, prompt_tokens, 16)


async def _refuse_next(dispatcher: Dispatcher, providers: list[ProviderConn], code: str) -> None:
    """Wait for the request to reach one of ``providers`` and answer it with a 400."""
    while True:
        for p in providers:
            if not p.outbox.empty():
                frame = decode(p.outbox.get_nowait(), coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)
                assert isinstance(frame, InferenceRequest)
                dispatcher.handle(p, InferenceError(request_id=frame.request_id, error=CANARY,
                                                    status_code=400, code=code))
                return
        await asyncio.sleep(0)


async def test_a_provider_4xx_is_retried_and_never_shown(make_provider: Callable[..., ProviderConn]) -> None:
    a, b = make_provider("a", models=(DEFAULT_MODEL.id,)), make_provider("b", models=(DEFAULT_MODEL.id,))
    service, dispatcher = _service(a, b)
    commit = asyncio.create_task(service.commit(_prepared(prompt_tokens=5), ANY))
    for _ in range(2):  # both providers refuse; each is tried once
        await _refuse_next(dispatcher, [a, b], "invalid_request_error")
    with pytest.raises(ProviderFailed) as failed:
        await commit
    assert failed.value.status_code in (502, 503) and CANARY not in failed.value.message
    assert "2 attempt(s)" in failed.value.message
    assert (a.in_flight, b.in_flight) == (0, 0)


async def test_context_length_without_a_tokenizer_is_the_consumers_400(
        make_provider: Callable[..., ProviderConn]) -> None:
    a, b = make_provider("a", models=(DEFAULT_MODEL.id,)), make_provider("b", models=(DEFAULT_MODEL.id,))
    service, dispatcher = _service(a, b)
    commit = asyncio.create_task(service.commit(_prepared(prompt_tokens=None), ANY))
    await _refuse_next(dispatcher, [a, b], "context_length_exceeded")
    with pytest.raises(InvalidRequest) as refused:
        await commit
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "messages"
    assert CANARY not in refused.value.message
    assert str(DEFAULT_MODEL.context_length) in refused.value.message
    # With its own count the coordinator already checked the length: then it is a failed attempt.
    commit = asyncio.create_task(service.commit(_prepared(prompt_tokens=5), ANY))
    for _ in range(2):
        await _refuse_next(dispatcher, [a, b], "context_length_exceeded")
    with pytest.raises(ProviderFailed):
        await commit
