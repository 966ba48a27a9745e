"""Anthropic Messages response bodies and streaming events (api.md §3.5).

Stream assertions run over the concatenation of stream_start, the deltas and stream_end, which is
what the consumer receives (the provider sends stream_start's events together with the first text).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from darkbloom.inference.anthropic_format import AnthropicFormatter
from darkbloom.inference.anthropic_request import parse_messages
from darkbloom.inference.formatting import Outcome

END_TURN = Outcome(finish_reason="stop", prompt_tokens=12, completion_tokens=5)
LENGTH = Outcome(finish_reason="length", prompt_tokens=12, completion_tokens=64)
STOP_SEQ = Outcome(finish_reason="stop", prompt_tokens=12, completion_tokens=3, stop_sequence="END")

Event = tuple[str, dict[str, Any]]


def formatter(**overrides: Any) -> AnthropicFormatter:
    body: dict[str, Any] = {"model": "claude-compatible-model", "max_tokens": 64,
                            "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body.update(overrides)
    return AnthropicFormatter(parse_messages(body))


def event(payload: str) -> Event:
    """Split one ``event: NAME\\ndata: {json}`` payload and check the name matches the JSON type."""
    lines = payload.split("\n")
    assert len(lines) == 2, payload
    assert lines[0].startswith("event: ")
    assert lines[1].startswith("data: ")
    name = lines[0][len("event: "):]
    data = json.loads(lines[1][len("data: "):])
    assert isinstance(data, dict)
    assert data["type"] == name
    return name, data


def stream(fmt: AnthropicFormatter, pieces: list[tuple[str, str]], outcome: Outcome,
           prompt_tokens: int = 12) -> list[Event]:
    payloads = fmt.stream_start(prompt_tokens)
    for kind, text in pieces:
        payloads += fmt.stream_reasoning(text) if kind == "reasoning" else fmt.stream_delta(text)
    payloads += fmt.stream_end(outcome)
    assert all("[DONE]" not in p for p in payloads)
    return [event(p) for p in payloads]


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


# --- non-streamed body -------------------------------------------------------------------


def test_id_prefix_and_uniqueness() -> None:
    fmt = formatter()
    assert re.fullmatch(r"msg_[0-9a-f]{32}", fmt.id)
    assert fmt.id != formatter().id


def test_body_shape_end_turn() -> None:
    fmt = formatter()
    doc = json.loads(fmt.body("Hello there", "", END_TURN))
    assert doc == {
        "id": fmt.id,
        "type": "message",
        "role": "assistant",
        "model": "claude-compatible-model",
        "content": [{"type": "text", "text": "Hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def test_body_is_a_bare_json_document() -> None:
    raw = formatter().body("x", "", END_TURN)
    assert raw.startswith("{")
    assert "\n" not in raw


def test_body_max_tokens() -> None:
    doc = json.loads(formatter().body("cut", "", LENGTH))
    assert doc["stop_reason"] == "max_tokens"
    assert doc["stop_sequence"] is None
    assert doc["usage"] == {"input_tokens": 12, "output_tokens": 64}


def test_body_stop_sequence_is_echoed() -> None:
    doc = json.loads(formatter().body("done", "", STOP_SEQ))
    assert doc["stop_reason"] == "stop_sequence"
    assert doc["stop_sequence"] == "END"
    assert doc["usage"] == {"input_tokens": 12, "output_tokens": 3}


def test_body_model_echoes_request_model() -> None:
    doc = json.loads(formatter(model="other/model-7b").body("", "", END_TURN))
    assert doc["model"] == "other/model-7b"
    assert doc["content"] == [{"type": "text", "text": ""}]


def test_body_keeps_unicode_and_escapes_json() -> None:
    text = 'quote " newline \n emoji ✓ é'
    doc = json.loads(formatter().body(text, "", END_TURN))
    assert doc["content"] == [{"type": "text", "text": text}]


def test_body_with_reasoning_has_a_thinking_block_first() -> None:
    doc = json.loads(formatter().body("42", "let me think", END_TURN))
    assert doc["content"] == [{"type": "thinking", "thinking": "let me think", "signature": ""},
                              {"type": "text", "text": "42"}]


# --- streaming ---------------------------------------------------------------------------


def test_stream_start_is_message_start() -> None:
    fmt = formatter()
    got = [event(p) for p in fmt.stream_start(prompt_tokens=12)]
    assert got[0] == ("message_start", {"type": "message_start", "message": {
        "id": fmt.id, "type": "message", "role": "assistant", "model": "claude-compatible-model",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }})
    assert "content_block_delta" not in names(got)


def test_text_stream_event_sequence() -> None:
    got = stream(formatter(), [("text", "Hel"), ("text", "lo")], END_TURN)
    assert names(got) == ["message_start", "content_block_start", "ping", "content_block_delta",
                          "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert got[1][1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}
    assert got[2][1] == {"type": "ping"}
    assert got[3][1] == {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": "Hel"}}
    assert got[4][1]["delta"] == {"type": "text_delta", "text": "lo"}
    assert got[5][1] == {"type": "content_block_stop", "index": 0}
    assert got[7][1] == {"type": "message_stop"}


def test_first_delta_opens_the_block_later_deltas_do_not() -> None:
    fmt = formatter()
    fmt.stream_start(3)
    assert names([event(p) for p in fmt.stream_delta("a")])[-1] == "content_block_delta"
    assert names([event(p) for p in fmt.stream_delta("b")]) == ["content_block_delta"]


def test_stream_delta_with_newlines_stays_one_data_line() -> None:
    got = stream(formatter(), [("text", "a\nb\n\nc")], END_TURN)
    deltas = [data for name, data in got if name == "content_block_delta"]
    assert [d["delta"]["text"] for d in deltas] == ["a\nb\n\nc"]


@pytest.mark.parametrize(("outcome", "reason", "sequence"), [
    (END_TURN, "end_turn", None),
    (LENGTH, "max_tokens", None),
    (STOP_SEQ, "stop_sequence", "END"),
])
def test_stream_end_events(outcome: Outcome, reason: str, sequence: str | None) -> None:
    fmt = formatter()
    fmt.stream_start(12)
    fmt.stream_delta("x")
    got = [event(p) for p in fmt.stream_end(outcome)]
    assert names(got) == ["content_block_stop", "message_delta", "message_stop"]
    assert got[0][1] == {"type": "content_block_stop", "index": 0}
    assert got[1][1] == {"type": "message_delta",
                         "delta": {"stop_reason": reason, "stop_sequence": sequence},
                         "usage": {"output_tokens": outcome.completion_tokens}}
    assert got[2][1] == {"type": "message_stop"}


def test_empty_generation_still_has_one_text_block() -> None:
    got = stream(formatter(), [], END_TURN)
    assert names(got) == ["message_start", "content_block_start", "ping", "content_block_stop",
                          "message_delta", "message_stop"]
    assert got[1][1]["content_block"] == {"type": "text", "text": ""}


def test_reasoning_then_text_opens_two_blocks() -> None:
    got = stream(formatter(), [("reasoning", "hmm"), ("reasoning", "..."), ("text", "42")], END_TURN)
    assert names(got) == ["message_start",
                          "content_block_start", "ping", "content_block_delta", "content_block_delta",
                          "content_block_stop",
                          "content_block_start", "content_block_delta", "content_block_stop",
                          "message_delta", "message_stop"]
    assert got[1][1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
    assert got[3][1] == {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "thinking_delta", "thinking": "hmm"}}
    assert got[5][1] == {"type": "content_block_stop", "index": 0}
    assert got[6][1] == {"type": "content_block_start", "index": 1,
                         "content_block": {"type": "text", "text": ""}}
    assert got[7][1] == {"type": "content_block_delta", "index": 1,
                         "delta": {"type": "text_delta", "text": "42"}}
    assert got[8][1] == {"type": "content_block_stop", "index": 1}


def test_exactly_one_ping_and_block_indices_balanced() -> None:
    pieces = [("reasoning", "a"), ("text", "b"), ("reasoning", "c"), ("text", "d")]
    got = stream(formatter(), pieces, END_TURN)
    assert names(got).count("ping") == 1
    starts = [d["index"] for n, d in got if n == "content_block_start"]
    stops = [d["index"] for n, d in got if n == "content_block_stop"]
    assert starts == stops == [0, 1, 2, 3]
    open_index = None
    for name, data in got:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None


def test_message_start_carries_the_formatter_id() -> None:
    fmt = formatter()
    got = stream(fmt, [("text", "a")], END_TURN)
    assert got[0][1]["message"]["id"] == fmt.id
