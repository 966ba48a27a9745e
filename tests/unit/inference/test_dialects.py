"""The dialect entry points, and every formatter honouring the Formatter contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.anthropic_format import AnthropicFormatter
from darkbloom.inference.dialects import ENDPOINTS, formatter_for, parse_request
from darkbloom.inference.formatting import Formatter, Outcome
from darkbloom.inference.openai_format import DONE, OpenAIFormatter
from darkbloom.inference.request import Message
from darkbloom.inference.responses_format import ResponsesFormatter

OUTCOME = Outcome(finish_reason="stop", prompt_tokens=5, completion_tokens=2)

BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/messages": {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "m", "input": "hi"},
}
FORMATTERS: dict[str, type] = {
    "/v1/chat/completions": OpenAIFormatter,
    "/v1/completions": OpenAIFormatter,
    "/v1/messages": AnthropicFormatter,
    "/v1/responses": ResponsesFormatter,
}


def data(payload: str) -> dict[str, Any]:
    """The JSON of one SSE payload (an optional ``event:`` line, then exactly one ``data:`` line)."""
    lines = payload.split("\n")
    assert lines[-1].startswith("data: ")
    assert len(lines) <= 2
    parsed = json.loads(lines[-1][len("data: "):])
    assert isinstance(parsed, dict)
    return parsed


# --- parse_request -----------------------------------------------------------------------


def test_endpoints() -> None:
    assert frozenset(BODIES) == ENDPOINTS


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_parse_request_routes_each_endpoint(endpoint: str) -> None:
    req = parse_request(endpoint, BODIES[endpoint])
    assert req.endpoint == endpoint
    assert req.model == "m"
    if endpoint == "/v1/completions":
        assert req.prompt == "hi"
    else:
        assert req.messages == (Message("user", "hi"),)


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/chat/completions/", "", "/v1/models",
                                      "v1/messages"])
def test_parse_request_unknown_endpoint(endpoint: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, BODIES["/v1/chat/completions"])
    assert info.value.status_code == 400


def test_parse_request_uses_the_endpoints_own_rules() -> None:
    # A chat body is not a Messages body (no max_tokens) nor a Responses body (no input).
    with pytest.raises(InvalidRequest):
        parse_request("/v1/messages", BODIES["/v1/chat/completions"])
    with pytest.raises(InvalidRequest):
        parse_request("/v1/responses", BODIES["/v1/chat/completions"])


# --- formatter_for -----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_formatter_for_returns_the_dialects_class(endpoint: str) -> None:
    req = parse_request(endpoint, BODIES[endpoint])
    fmt = formatter_for(req)
    assert type(fmt) is FORMATTERS[endpoint]
    assert fmt.request is req  # type: ignore[attr-defined]


@pytest.mark.parametrize("endpoint", sorted(BODIES))
def test_every_formatter_honours_the_contract(endpoint: str) -> None:
    fmt: Formatter = formatter_for(parse_request(endpoint, {**BODIES[endpoint], "stream": True}))
    payloads = [*fmt.stream_start(5), *fmt.stream_reasoning("hm"), *fmt.stream_delta("he"),
                *fmt.stream_delta("llo"), *fmt.stream_end(OUTCOME)]
    assert payloads
    for p in payloads:
        assert isinstance(p, str)
        assert not p.endswith("\n")
        if p != DONE:
            data(p)
    for reasoning in ("", "hm"):
        doc = json.loads(fmt.body("hello", reasoning, OUTCOME))
        assert doc["model"] == "m"


# --- OpenAIFormatter's Formatter methods -------------------------------------------------


def openai(endpoint: str, **extra: Any) -> OpenAIFormatter:
    fmt = formatter_for(parse_request(endpoint, {**BODIES[endpoint], **extra}))
    assert isinstance(fmt, OpenAIFormatter)
    return fmt


def test_chat_stream_start_is_the_role_chunk() -> None:
    fmt = openai("/v1/chat/completions", stream=True)
    (first,) = fmt.stream_start(5)
    chunk = data(first)
    assert chunk["id"] == fmt.id
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]


def test_chat_stream_delta() -> None:
    (delta,) = openai("/v1/chat/completions", stream=True).stream_delta("abc")
    assert data(delta)["choices"] == [{"index": 0, "delta": {"content": "abc"}, "finish_reason": None}]


def test_chat_stream_end_ends_with_done() -> None:
    end = openai("/v1/chat/completions", stream=True).stream_end(OUTCOME)
    assert end[-1] == DONE == "data: [DONE]"
    assert len(end) == 2
    final = data(end[0])
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert final["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chat_stream_end_with_include_usage() -> None:
    fmt = openai("/v1/chat/completions", stream=True, stream_options={"include_usage": True})
    end = fmt.stream_end(Outcome(finish_reason="length", prompt_tokens=5, completion_tokens=9))
    assert end[-1] == DONE
    assert len(end) == 3
    assert data(end[0])["choices"][0]["finish_reason"] == "length"
    assert "usage" not in data(end[0])
    assert data(end[1])["choices"] == []
    assert data(end[1])["usage"] == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}


def test_completions_stream_start_is_empty() -> None:
    assert openai("/v1/completions", stream=True).stream_start(5) == []


def test_completions_stream_delta_and_end() -> None:
    fmt = openai("/v1/completions", stream=True)
    (delta,) = fmt.stream_delta("abc")
    chunk = data(delta)
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": None}]
    end = fmt.stream_end(OUTCOME)
    assert end[-1] == DONE
    assert data(end[0])["choices"][0]["finish_reason"] == "stop"


def test_chat_body() -> None:
    fmt = openai("/v1/chat/completions")
    doc = json.loads(fmt.body("hello", "", OUTCOME))
    assert doc["id"] == fmt.id
    assert doc["object"] == "chat.completion"
    assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                               "finish_reason": "stop"}]
    assert doc["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chat_stream_reasoning_is_reasoning_content() -> None:
    (chunk,) = openai("/v1/chat/completions", stream=True).stream_reasoning("hmm")
    assert data(chunk)["choices"] == [{"index": 0, "delta": {"reasoning_content": "hmm"},
                                       "finish_reason": None}]


def test_chat_body_with_reasoning() -> None:
    doc = json.loads(openai("/v1/chat/completions").body("42", "hmm", OUTCOME))
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": "42",
                                            "reasoning_content": "hmm"}


def test_completions_body() -> None:
    fmt = openai("/v1/completions")
    doc = json.loads(fmt.body("hello", "", Outcome(finish_reason="length", prompt_tokens=1,
                                                   completion_tokens=3)))
    assert doc["object"] == "text_completion"
    assert doc["choices"] == [{"index": 0, "text": "hello", "logprobs": None, "finish_reason": "length"}]
    assert doc["usage"]["total_tokens"] == 4
