"""The generated text the coordinator recounts, in every dialect, streamed and not: content,
reasoning and tool calls count; framing, ids, usage and anything unparsable do not."""

from __future__ import annotations

import json

from darkbloom.coordinator.recount import generated_text


def _event(obj: object, name: str | None = None) -> bytes:
    data = b"data: " + json.dumps(obj).encode()
    return (f"event: {name}\n".encode() + data) if name else data


def test_chat_stream_and_body() -> None:
    events = [
        _event({"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]}),
        _event({"choices": [{"delta": {"content": "lo", "reasoning_content": "hmm"}}]}),
        _event(
            {"choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]}
        ),
        _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 99}}),
        b"data: [DONE]",
        b": darkbloom-receipt xyz",
        b"data: {not json",
    ]
    assert generated_text("/v1/chat/completions", True, events) == "Hellohmmf{}"
    body = {
        "id": "chatcmpl-1",
        "choices": [{"message": {"role": "assistant", "content": "Hi there", "tool_calls": None}}],
    }
    assert (
        generated_text("/v1/chat/completions", False, [b"data: " + json.dumps(body).encode()])
        == "Hi there"
    )


def test_completions() -> None:
    events = [_event({"choices": [{"text": "Once"}]}), _event({"choices": [{"text": " upon"}]})]
    assert generated_text("/v1/completions", True, events) == "Once upon"
    assert (
        generated_text("/v1/completions", False, [json.dumps({"choices": [{"text": "x"}]}).encode()])
        == "x"
    )


def test_messages_stream_and_body() -> None:
    events = [
        _event({"type": "message_start", "message": {"id": "msg_1", "content": []}}, "message_start"),
        _event({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
        _event({"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "t"}}),
        _event(
            {"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": '{"a'}}
        ),
        _event({"type": "message_delta", "usage": {"output_tokens": 50}}),
    ]
    assert generated_text("/v1/messages", True, events) == 'Hit{"a'
    body = {
        "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "name": "f", "input": {"a": 1}}]
    }
    assert generated_text("/v1/messages", False, [json.dumps(body).encode()]) == 'Hif{"a": 1}'


def test_responses_stream_and_body() -> None:
    events = [
        _event({"type": "response.created", "response": {"id": "resp_1"}}),
        _event({"type": "response.output_text.delta", "delta": "Hel"}),
        _event({"type": "response.output_text.delta", "delta": "lo"}),
        _event({"type": "response.output_text.done", "text": "Hello"}),  # repeats: not counted
        _event({"type": "response.function_call_arguments.delta", "delta": "{}"}),
    ]
    assert generated_text("/v1/responses", True, events) == "Hello{}"
    body = {
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ]
    }
    assert generated_text("/v1/responses", False, [json.dumps(body).encode()]) == "Hif{}"


def test_odd_shapes_count_nothing() -> None:
    for junk in (
        b"",
        b"data: null",
        b"data: []",
        b'data: {"choices": "x"}',
        b'data: {"choices": [1]}',
        b'data: {"choices": [{"delta": 5}]}',
        b"\xff\xfe",
    ):
        assert generated_text("/v1/chat/completions", True, [junk]) == ""
    assert generated_text("/v1/responses", False, [b'{"output": [{"content": "x"}]}']) == ""
