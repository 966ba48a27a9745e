"""POST /v1/responses held against OpenAI's Responses API reference, through the stock SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator


def test_output_text_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.model == MODEL and response.output_text
    assert response.output[0].type == "message"
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_length_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Write a long story.", max_output_tokens=4,
                                       temperature=0)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_instructions_and_items(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, instructions="Answer in one word.", max_output_tokens=6, temperature=0,
        input=[
            {"role": "user", "content": "Colour of the sky?"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Blue."}]},
            {"role": "developer", "content": [{"type": "input_text", "text": "Be terse."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "And grass?"}]},
        ])
    assert response.instructions == "Answer in one word."
    assert response.output_text


def test_same_generation_as_chat(client: openai.OpenAI) -> None:
    """One translation layer: the same greedy request gives the same text in both dialects."""
    chat = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0,
                                          messages=[{"role": "user", "content": "Name a fruit."}])
    response = client.responses.create(model=MODEL, input="Name a fruit.", max_output_tokens=16,
                                       temperature=0)
    assert response.output_text == chat.choices[0].message.content


def test_streaming_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Write a long story about a ship.", temperature=0,
                                 max_output_tokens=10) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    assert final.usage is not None and final.usage.output_tokens == 10


def test_streaming_wire_has_no_done_marker(stack: Coordinator) -> None:
    with httpx.stream("POST", f"{stack.base_url}/v1/responses", timeout=60,
                      json={"model": MODEL, "input": "Write a long story.", "max_output_tokens": 3,
                            "temperature": 0, "stream": True},
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as r:
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b]
    assert "[DONE]" not in raw
    assert blocks[-1].startswith(": darkbloom-receipt ")  # the receipt is the last line
    last = json.loads(blocks[-2].split("data: ", 1)[1])
    assert last["type"] == "response.completed" and last["response"]["usage"]["output_tokens"] == 3


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "computer_call", "call_id": "c"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": 9}, "temperature"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "x", "extra_body": {"frobnicate": 1}}, "frobnicate"),
])
def test_bad_requests_are_openai_400s(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, **kwargs)
    error = info.value.response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_oversized_and_malformed_bodies(stack: Coordinator) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    big = b'{"model":"smollm2-135m","input":"' + b"a" * (5 << 20) + b'"}'
    response = httpx.post(f"{stack.base_url}/v1/responses", content=big, headers=headers)
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"
    response = httpx.post(f"{stack.base_url}/v1/responses", content=b"[1]", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
