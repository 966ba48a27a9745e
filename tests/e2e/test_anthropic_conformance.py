"""POST /v1/messages held against Anthropic's Messages API reference, through the stock SDK.

The SDK is pointed at the coordinator root (it appends /v1/messages itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e.harness import MODEL, Coordinator

HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def claude(stack: Coordinator) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0,
                                 timeout=120)
    yield client
    client.close()


def _events(stack: Coordinator, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream("POST", f"{stack.base_url}/v1/messages", json=body, timeout=60,
                      headers={"x-api-key": stack.api_key, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    events = []
    for block in filter(None, raw.split("\n\n")):
        if block.startswith(":"):
            continue
        name, data = block.split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[len("data: "):])
        assert payload["type"] == name[len("event: "):]
        events.append((payload["type"], payload))
    return events


def test_message_non_streaming(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=12, messages=HI,
                                                   system="Answer briefly.")
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.stop_sequence is None
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    assert raw.headers["request-id"]


def test_max_tokens_stop_reason_and_system_blocks(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Write a long poem."}],
        system=[{"type": "text", "text": "You are a poet."}], extra_body={"temperature": 0})
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stop_sequences(claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(model=MODEL, max_tokens=30, messages=HI,
                                  extra_body={"temperature": 0})
    text = free.content[0].text  # type: ignore[union-attr]
    word = text.split()[1] if len(text.split()) > 1 else text.split()[0]
    stopped = claude.messages.create(model=MODEL, max_tokens=30, messages=HI, stop_sequences=[word],
                                     extra_body={"temperature": 0})
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text  # type: ignore[union-attr]


def test_content_blocks_and_multi_turn(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Pick a colour."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
        {"role": "user", "content": "Another one?"},
    ], extra_body={"top_k": 20, "top_p": 0.9})
    assert message.content[0].type == "text"


def test_streaming_with_the_sdk(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=10, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_exact_streaming_event_sequence(stack: Coordinator) -> None:
    events = _events(stack, {"model": MODEL, "max_tokens": 5, "stream": True, "temperature": 0,
                             "messages": [{"role": "user", "content": "Write a long poem."}]})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] > 0
    assert start["stop_reason"] is None
    assert events[1][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    assert all(p["delta"]["type"] == "text_delta" for n, p in events if n == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 5


def _error(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return dict(body["error"])


@pytest.mark.parametrize(("body", "fragment"), [
    ({"messages": HI}, "max_tokens"),
    ({"max_tokens": 5}, "messages"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"max_tokens": 5, "messages": HI, "temperature": 1.5}, "temperature"),
    ({"max_tokens": 5, "messages": HI, "top_k": -1}, "top_k"),
    ({"max_tokens": 5, "messages": HI, "stop_sequences": "STOP"}, "stop_sequences"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "image"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "hologram"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": 42}]}, "content"),
    ({"max_tokens": 5, "messages": HI, "frobnicate": True}, "frobnicate"),
    ({"max_tokens": "five", "messages": HI}, "max_tokens"),
])
def test_bad_requests_are_anthropic_400s(stack: Coordinator, body: dict[str, Any], fragment: str) -> None:
    claude = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.post("/v1/messages", body={"model": MODEL, **body}, cast_to=object)
    error = _error(info.value)
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_errors_map_to_sdk_exceptions(stack: Coordinator, claude: anthropic.Anthropic) -> None:
    bad = anthropic.Anthropic(base_url=stack.base_url, api_key="sk-db-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model=MODEL, max_tokens=5, messages=HI)
    assert _error(auth.value)["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-nonexistent", max_tokens=5, messages=HI)
    assert _error(missing.value)["type"] == "not_found_error"
    response = httpx.post(f"{stack.base_url}/v1/messages", content=b"{oops",
                          headers={"x-api-key": stack.api_key})
    assert response.status_code == 400 and response.json()["type"] == "error"
    big = b'{"model":"smollm2-135m","max_tokens":5,"messages":[{"role":"user","content":"' + \
        b"a" * (5 << 20) + b'"}]}'
    response = httpx.post(f"{stack.base_url}/v1/messages", content=big,
                          headers={"x-api-key": stack.api_key})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_bearer_auth_and_version_header_optional(stack: Coordinator) -> None:
    response = httpx.post(f"{stack.base_url}/v1/messages", timeout=60,
                          json={"model": MODEL, "max_tokens": 2, "messages": HI},
                          headers={"Authorization": f"Bearer {stack.api_key}"})
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_count_tokens_matches_generation_usage(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=MODEL, messages=HI, system="Answer briefly.")
    message = claude.messages.create(model=MODEL, max_tokens=2, messages=HI, system="Answer briefly.")
    assert counted.input_tokens == message.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="nope", messages=HI)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.count_tokens(model=MODEL, messages=[])
    assert _error(info.value)["type"] == "invalid_request_error"
