"""OpenAI response bodies and SSE chunks, in the shapes OpenAI's SDKs parse (api.md §3.2, §3.4)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from darkbloom.inference.openai_format import DONE, OpenAIFormatter, UsageCounts, dumps
from darkbloom.inference.request import parse_chat, parse_completion

USAGE = UsageCounts(prompt_tokens=7, completion_tokens=3)
USAGE_JSON = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def chat_formatter(**body: Any) -> OpenAIFormatter:
    return OpenAIFormatter(parse_chat({"model": "my-model", "messages": [{"role": "user", "content": "hi"}],
                                       **body}))


def completion_formatter(**body: Any) -> OpenAIFormatter:
    return OpenAIFormatter(parse_completion({"model": "my-model", "prompt": "hi", **body}))


def sse(line: str) -> dict[str, Any]:
    assert line.startswith("data: ")
    assert "\n" not in line
    payload = json.loads(line[len("data: "):])
    assert isinstance(payload, dict)
    return payload


def test_ids_and_created() -> None:
    chat = chat_formatter()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", chat.id)
    text = completion_formatter()
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", text.id)
    assert chat.id != chat_formatter().id
    assert abs(chat.created - time.time()) < 5


def test_usage_counts() -> None:
    assert USAGE.as_openai() == USAGE_JSON


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, "é✓"]}) == '{"a":[1,"é✓"]}'


def test_done_line() -> None:
    assert DONE == "data: [DONE]"


# --- chat streaming ----------------------------------------------------------------------


def test_chat_first_chunk_carries_role() -> None:
    f = chat_formatter(stream=True)
    chunk = sse(f.first_chunk() or "")
    assert chunk == {"id": f.id, "object": "chat.completion.chunk", "created": f.created, "model": "my-model",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}]}


def test_chat_delta_chunk() -> None:
    f = chat_formatter(stream=True)
    chunk = sse(f.delta_chunk("Hel\"lo\n"))
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["id"] == f.id
    assert chunk["choices"] == [{"index": 0, "delta": {"content": "Hel\"lo\n"}, "finish_reason": None}]
    assert "usage" not in chunk


def test_chat_final_chunk_without_include_usage_carries_usage() -> None:
    f = chat_formatter(stream=True)
    [final] = f.final_chunks("stop", USAGE)
    chunk = sse(final)
    assert chunk["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunk["usage"] == USAGE_JSON


def test_chat_final_chunks_with_include_usage() -> None:
    f = chat_formatter(stream=True, stream_options={"include_usage": True})
    finish, usage = (sse(line) for line in f.final_chunks("length", USAGE))
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert "usage" not in finish
    assert usage == {"id": f.id, "object": "chat.completion.chunk", "created": f.created,
                     "model": "my-model", "choices": [], "usage": USAGE_JSON}


def test_every_chunk_shares_id_created_and_model() -> None:
    f = chat_formatter(stream=True, stream_options={"include_usage": True})
    lines = [f.first_chunk() or "", f.delta_chunk("a"), f.delta_chunk("b"), *f.final_chunks("stop", USAGE)]
    chunks = [sse(line) for line in lines]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (f.id, f.created, "my-model", "chat.completion.chunk")}


# --- chat non-streaming ------------------------------------------------------------------


def test_chat_full_response() -> None:
    f = chat_formatter()
    body = json.loads(f.full_response("Hello ✓", "stop", USAGE))
    assert body == {
        "id": f.id, "object": "chat.completion", "created": f.created, "model": "my-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello ✓"},
                     "finish_reason": "stop"}],
        "usage": USAGE_JSON,
    }


def test_chat_full_response_empty_content_is_string() -> None:
    body = json.loads(chat_formatter().full_response("", "length", USAGE))
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "length"


def test_model_is_the_requested_id() -> None:
    f = OpenAIFormatter(parse_chat({"model": "alias/Model-Q4",
                                    "messages": [{"role": "user", "content": "x"}]}))
    assert json.loads(f.full_response("x", "stop", USAGE))["model"] == "alias/Model-Q4"


# --- text completions --------------------------------------------------------------------


def test_completion_has_no_first_chunk() -> None:
    assert completion_formatter(stream=True).first_chunk() is None


def test_completion_delta_chunk() -> None:
    f = completion_formatter(stream=True)
    chunk = sse(f.delta_chunk(" there"))
    assert chunk == {"id": f.id, "object": "text_completion", "created": f.created, "model": "my-model",
                     "choices": [{"index": 0, "text": " there", "logprobs": None, "finish_reason": None}]}


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_final_chunks(include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    f = completion_formatter(stream=True, **options)
    chunks = [sse(line) for line in f.final_chunks("stop", USAGE)]
    finish_choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    assert all(c["object"] == "text_completion" and c["id"] == f.id for c in chunks)
    if include_usage:
        assert [c["choices"] for c in chunks] == [[finish_choice], []]
        assert "usage" not in chunks[0]
        assert chunks[1]["usage"] == USAGE_JSON
    else:
        [only] = chunks
        assert only["choices"] == [finish_choice]
        assert only["usage"] == USAGE_JSON


def test_completion_full_response() -> None:
    f = completion_formatter()
    body = json.loads(f.full_response(" upon a time", "length", USAGE))
    assert body == {
        "id": f.id, "object": "text_completion", "created": f.created, "model": "my-model",
        "choices": [{"index": 0, "text": " upon a time", "logprobs": None, "finish_reason": "length"}],
        "usage": USAGE_JSON,
    }
