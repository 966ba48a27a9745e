"""OpenAI Responses objects and streaming events (api.md §3.3).

Stream assertions run over the concatenation of stream_start, the deltas and stream_end, which is
what the consumer receives.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from darkbloom.inference.formatting import Outcome
from darkbloom.inference.responses_format import ResponsesFormatter
from darkbloom.inference.responses_request import parse_responses

STOP = Outcome(finish_reason="stop", prompt_tokens=10, completion_tokens=4)
LENGTH = Outcome(finish_reason="length", prompt_tokens=10, completion_tokens=16)

Event = tuple[str, dict[str, Any]]


def formatter(**overrides: Any) -> ResponsesFormatter:
    body: dict[str, Any] = {"model": "resp-model", "input": "hi", "stream": True}
    body.update(overrides)
    return ResponsesFormatter(parse_responses(body))


def event(payload: str) -> Event:
    lines = payload.split("\n")
    assert len(lines) == 2, payload
    assert lines[0].startswith("event: ")
    assert lines[1].startswith("data: ")
    name = lines[0][len("event: "):]
    data = json.loads(lines[1][len("data: "):])
    assert isinstance(data, dict)
    assert data["type"] == name
    return name, data


def stream(fmt: ResponsesFormatter, pieces: list[tuple[str, str]], outcome: Outcome) -> list[Event]:
    payloads = fmt.stream_start(outcome.prompt_tokens)
    for kind, text in pieces:
        payloads += fmt.stream_reasoning(text) if kind == "reasoning" else fmt.stream_delta(text)
    payloads += fmt.stream_end(outcome)
    assert all("[DONE]" not in p for p in payloads)
    return [event(p) for p in payloads]


def text(*deltas: str) -> list[tuple[str, str]]:
    return [("text", d) for d in deltas]


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


def only(events: list[Event], name: str) -> dict[str, Any]:
    found = [data for n, data in events if n == name]
    assert len(found) == 1, (name, names(events))
    return found[0]


# --- non-streamed body -------------------------------------------------------------------


def test_ids() -> None:
    fmt = formatter()
    assert re.fullmatch(r"resp_[0-9a-f]{32}", fmt.id)
    assert fmt.id != formatter().id
    assert abs(fmt.created_at - time.time()) < 5


def test_body_completed() -> None:
    fmt = formatter(max_output_tokens=100, temperature=0.3)
    doc = json.loads(fmt.body("Hello", "", STOP))
    assert doc["id"] == fmt.id
    assert doc["object"] == "response"
    assert doc["created_at"] == fmt.created_at
    assert doc["model"] == "resp-model"
    assert doc["status"] == "completed"
    assert doc["error"] is None
    assert doc["incomplete_details"] is None
    assert doc["max_output_tokens"] == 100
    assert doc["temperature"] == 0.3
    (item,) = doc["output"]
    assert re.fullmatch(r"msg_[0-9a-f]+(_0)?", item.pop("id"))
    assert item == {"type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}]}
    assert doc["usage"] == {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 14,
    }


def test_body_incomplete_on_length() -> None:
    doc = json.loads(formatter().body("cut", "", LENGTH))
    assert doc["status"] == "incomplete"
    assert doc["incomplete_details"] == {"reason": "max_output_tokens"}
    assert doc["output"][0]["content"][0]["text"] == "cut"
    assert doc["usage"]["total_tokens"] == 26


def test_body_with_reasoning() -> None:
    doc = json.loads(formatter().body("42", "thinking hard", STOP))
    reasoning, message = doc["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "thinking hard"}]
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    assert message["content"][0]["text"] == "42"
    # api.md §3.3 (reference quirk): all output counts as reasoning once any reasoning exists.
    assert doc["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}


def test_body_echoes_instructions() -> None:
    doc = json.loads(formatter(instructions="be brief").body("ok", "", STOP))
    assert doc["instructions"] == "be brief"
    assert json.loads(formatter().body("ok", "", STOP))["instructions"] is None


def test_body_instructions_null_when_only_a_developer_item() -> None:
    items = [{"role": "developer", "content": "house rules"}, {"role": "user", "content": "q"}]
    assert json.loads(formatter(input=items).body("ok", "", STOP))["instructions"] is None


def test_body_is_a_bare_json_document() -> None:
    raw = formatter().body("x", "", STOP)
    assert raw.startswith("{")
    assert "\n" not in raw


# --- streaming ---------------------------------------------------------------------------


def test_stream_event_order() -> None:
    got = stream(formatter(), text("Hel", "lo"), STOP)
    assert names(got) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


@pytest.mark.parametrize("pieces", [
    text("a", "b", "c"),
    [],
    [("reasoning", "r1"), ("reasoning", "r2"), ("text", "t")],
    [("reasoning", "only reasoning")],
])
def test_sequence_numbers_strictly_increase_from_zero(pieces: list[tuple[str, str]]) -> None:
    got = stream(formatter(), pieces, STOP)
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))


def test_start_events_describe_an_in_progress_response() -> None:
    fmt = formatter(instructions="be brief", max_output_tokens=50)
    got = [event(p) for p in fmt.stream_start(10)]
    assert names(got)[:2] == ["response.created", "response.in_progress"]
    for _, data in got[:2]:
        response = data["response"]
        assert response["id"] == fmt.id
        assert response["object"] == "response"
        assert response["status"] == "in_progress"
        assert response["model"] == "resp-model"
        assert response["output"] == []
        assert response["usage"] is None
        assert response["instructions"] == "be brief"
        assert response["max_output_tokens"] == 50


def test_message_item_and_part_added() -> None:
    got = stream(formatter(), text("x"), STOP)
    added = only(got, "response.output_item.added")
    assert added["output_index"] == 0
    item_id = added["item"]["id"]
    assert added["item"] == {"id": item_id, "type": "message", "role": "assistant",
                             "status": "in_progress", "content": []}
    part = only(got, "response.content_part.added")
    assert (part["item_id"], part["output_index"], part["content_index"]) == (item_id, 0, 0)
    assert part["part"]["type"] == "output_text"
    assert part["part"]["text"] == ""


def test_deltas_and_done_carry_the_text() -> None:
    got = stream(formatter(), text("Hel", "lo", " ✓"), STOP)
    deltas = [data for name, data in got if name == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == ["Hel", "lo", " ✓"]
    assert only(got, "response.output_text.done")["text"] == "Hello ✓"
    assert only(got, "response.content_part.done")["part"]["text"] == "Hello ✓"
    item = only(got, "response.output_item.done")["item"]
    assert item["status"] == "completed"
    assert item["content"][0]["text"] == "Hello ✓"


def test_item_ids_consistent_across_events() -> None:
    fmt = formatter()
    got = stream(fmt, text("x", "y"), STOP)
    item_ids = {data["item_id"] for _, data in got if "item_id" in data}
    item_ids |= {data["item"]["id"] for _, data in got if "item" in data}
    item_ids |= {data["response"]["output"][0]["id"] for _, data in got
                 if "response" in data and data["response"]["output"]}
    assert len(item_ids) == 1
    assert item_ids.pop().startswith("msg_")
    assert {data["response"]["id"] for _, data in got if "response" in data} == {fmt.id}
    assert all(data.get("output_index", 0) == 0 for _, data in got)


def test_completed_event_carries_usage_and_output() -> None:
    fmt = formatter()
    got = stream(fmt, text("Hi"), STOP)
    name, data = got[-1]
    assert name == "response.completed"
    response = data["response"]
    assert response["status"] == "completed"
    assert response["incomplete_details"] is None
    assert response["usage"]["input_tokens"] == 10
    assert response["usage"]["output_tokens"] == 4
    assert response["usage"]["total_tokens"] == 14
    assert response["output"][0]["content"][0]["text"] == "Hi"
    assert response == json.loads(fmt.body("Hi", "", STOP))


def test_length_stop_streams_completed_with_incomplete_status() -> None:
    name, data = stream(formatter(), text("cut"), LENGTH)[-1]
    assert name == "response.completed"
    assert data["response"]["status"] == "incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_empty_generation_still_has_a_message_item() -> None:
    got = stream(formatter(), [], STOP)
    assert names(got) == ["response.created", "response.in_progress", "response.output_item.added",
                          "response.content_part.added", "response.output_text.done",
                          "response.content_part.done", "response.output_item.done", "response.completed"]
    assert only(got, "response.output_text.done")["text"] == ""
    assert got[-1][1]["response"]["output"][0]["type"] == "message"


def test_reasoning_then_text() -> None:
    fmt = formatter()
    got = stream(fmt, [("reasoning", "hm"), ("reasoning", "m"), ("text", "42")], STOP)
    assert names(got) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    reasoning_item = got[2][1]["item"]
    assert reasoning_item["type"] == "reasoning"
    assert reasoning_item["id"].startswith("rs_")
    assert got[2][1]["output_index"] == 0
    assert got[4][1]["item_id"] == reasoning_item["id"]
    assert got[4][1]["summary_index"] == 0
    assert only(got, "response.reasoning_summary_text.done")["text"] == "hmm"
    assert got[8][1]["item"]["summary"] == [{"type": "summary_text", "text": "hmm"}]
    message_item = got[9][1]["item"]
    assert message_item["type"] == "message"
    assert got[9][1]["output_index"] == 1
    assert message_item["id"] != reasoning_item["id"]
    assert {got[i][1]["item_id"] for i in (10, 11, 12, 13)} == {message_item["id"]}
    assert {got[i][1]["output_index"] for i in (10, 11, 12, 13, 14)} == {1}
    final = got[-1][1]["response"]
    assert [item["id"] for item in final["output"]] == [reasoning_item["id"], message_item["id"]]
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
    assert final == json.loads(fmt.body("42", "hmm", STOP))


def test_reasoning_only_stream_ends_with_an_empty_message() -> None:
    got = stream(formatter(), [("reasoning", "r")], STOP)
    output = got[-1][1]["response"]["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]
    assert output[1]["content"][0]["text"] == ""
