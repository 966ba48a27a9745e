"""Validation of OpenAI Responses request bodies, POST /v1/responses (api.md §3.3)."""

from __future__ import annotations

from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.request import MAX_MESSAGES, Message, Sampling
from darkbloom.inference.responses_request import parse_responses

CANARY = "CANARY-51be07-do-not-echo"


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "m", "input": "hi"}
    base.update(overrides)
    return base


def without(b: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in b.items() if k != key}


def invalid(b: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_responses(b)
    err = info.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    return err


def assert_invalid(b: dict[str, Any], param: str, code: str = "invalid_request_error") -> InvalidRequest:
    err = invalid(b)
    assert (err.param, err.code) == (param, code), err.message
    return err


def msg(role: str, content: Any, typed: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"role": role, "content": content}
    if typed:
        item["type"] = "message"
    return item


# --- input -------------------------------------------------------------------------------


def test_input_string_is_one_user_message_and_defaults() -> None:
    req = parse_responses(body())
    assert req.endpoint == "/v1/responses"
    assert req.model == "m"
    assert req.messages == (Message("user", "hi"),)
    assert req.prompt is None
    assert req.max_tokens is None
    assert req.stop == ()
    assert req.stream is False
    assert req.sampling == Sampling()


@pytest.mark.parametrize("value", ["", []])
def test_empty_input(value: Any) -> None:
    assert_invalid(body(input=value), "input")


@pytest.mark.parametrize("value", [None, 5, {"role": "user", "content": "hi"}, True])
def test_input_missing_or_wrong_type(value: Any) -> None:
    b = body(input=value) if value is not None else without(body(), "input")
    assert_invalid(b, "input")


def test_input_item_count_limit() -> None:
    one = msg("user", "x")
    assert len(parse_responses(body(input=[one] * MAX_MESSAGES)).messages) == MAX_MESSAGES
    assert_invalid(body(input=[one] * (MAX_MESSAGES + 1)), "input")


def test_items_with_and_without_message_type() -> None:
    items = [msg("user", "a"), msg("assistant", "b", typed=False), msg("user", "c", typed=False)]
    req = parse_responses(body(input=items))
    assert req.messages == (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))


def test_developer_becomes_system() -> None:
    items = [msg("developer", "rules"), msg("system", "more rules"), msg("user", "q")]
    req = parse_responses(body(input=items))
    assert req.messages == (Message("system", "rules"), Message("system", "more rules"), Message("user", "q"))


def test_instructions_become_leading_system_message() -> None:
    req = parse_responses(body(instructions="be brief", input=[msg("developer", "d"), msg("user", "q")]))
    assert req.messages == (Message("system", "be brief"), Message("system", "d"), Message("user", "q"))
    req = parse_responses(body(instructions="be brief"))
    assert req.messages == (Message("system", "be brief"), Message("user", "hi"))


def test_empty_or_null_instructions_add_nothing() -> None:
    assert parse_responses(body(instructions="")).messages == (Message("user", "hi"),)
    assert parse_responses(body(instructions=None)).messages == (Message("user", "hi"),)


@pytest.mark.parametrize("value", [5, ["a"], {"text": "x"}])
def test_instructions_must_be_a_string(value: Any) -> None:
    assert_invalid(body(instructions=value), "instructions")


def test_text_parts_joined_with_newline() -> None:
    parts = [{"type": "input_text", "text": "first"}, {"type": "input_text", "text": "second"}]
    assistant = [{"type": "output_text", "text": "a1", "annotations": []},
                 {"type": "output_text", "text": "a2"}]
    req = parse_responses(body(input=[msg("user", parts), msg("assistant", assistant)]))
    assert req.messages == (Message("user", "first\nsecond"), Message("assistant", "a1\na2"))


@pytest.mark.parametrize("part", [
    {"type": "input_image", "image_url": "https://example.com/cat.png"},
    {"type": "input_file", "file_id": "file-1"},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
])
def test_non_text_parts_unsupported(part: dict[str, Any]) -> None:
    parts = [{"type": "input_text", "text": "what is this?"}, part]
    err = assert_invalid(body(input=[msg("user", parts)]), "input[0].content[1].type",
                         "unsupported_parameter")
    assert part["type"] in err.message


@pytest.mark.parametrize("part", ["text", None, {"text": "hi"}, {"type": 1, "text": "hi"}])
def test_part_without_type(part: Any) -> None:
    assert_invalid(body(input=[msg("user", [part])]), "input[0].content[0]")


@pytest.mark.parametrize("part", [{"type": "input_text"}, {"type": "input_text", "text": 5}])
def test_text_part_without_string_text(part: dict[str, Any]) -> None:
    assert_invalid(body(input=[msg("user", [part])]), "input[0].content[0].text")


@pytest.mark.parametrize("content", [None, 5, {"type": "input_text", "text": "hi"}])
def test_content_wrong_type(content: Any) -> None:
    assert_invalid(body(input=[msg("user", content)]), "input[0].content")


@pytest.mark.parametrize("item", [
    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "42"},
])
def test_function_call_items_unsupported(item: dict[str, Any]) -> None:
    assert_invalid(body(input=[msg("user", "q"), item]), "input[1].type", "unsupported_parameter")


def test_reasoning_items_skipped() -> None:
    items = [msg("user", "q"), {"type": "reasoning", "id": "rs_1", "summary": []}, msg("assistant", "a"),
             msg("user", "q2")]
    req = parse_responses(body(input=items))
    assert req.messages == (Message("user", "q"), Message("assistant", "a"), Message("user", "q2"))


@pytest.mark.parametrize("kind", ["item_reference", "web_search_call", "input_text", ""])
def test_unknown_item_type(kind: str) -> None:
    err = assert_invalid(body(input=[{"type": kind, "role": "user", "content": "x"}]), "input[0].type")
    assert err.code == "invalid_request_error"


@pytest.mark.parametrize("item", ["hi", None, 1, ["user", "hi"]])
def test_item_not_an_object(item: Any) -> None:
    assert_invalid(body(input=[msg("user", "ok"), item]), "input[1]")


@pytest.mark.parametrize("role", ["tool", "User", "", None, 1])
def test_bad_role(role: Any) -> None:
    item = {"content": "hi"} if role is None else {"role": role, "content": "hi"}
    assert_invalid(body(input=[item]), "input[0].role")


@pytest.mark.parametrize("role", [["user"], {"r": "user"}])
def test_unhashable_role_is_a_400(role: Any) -> None:
    assert_invalid(body(input=[{"role": role, "content": "hi"}]), "input[0].role")


# --- refused and accepted top-level fields -----------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("previous_response_id", "resp_123"),
    ("top_logprobs", 2),
    ("background", True),
    ("include", ["reasoning.encrypted_content"]),
    ("tools", [{"type": "function", "name": "f", "parameters": {}}]),
    ("tools", [{"type": "web_search"}]),
    ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "name": "f"}),
])
def test_unsupported_fields(key: str, value: Any) -> None:
    assert_invalid(body(**{key: value}), key, "unsupported_parameter")


def test_harmless_values_of_unsupported_fields_accepted() -> None:
    req = parse_responses(body(previous_response_id=None, top_logprobs=None, background=False, include=[],
                               tools=[], tool_choice="auto"))
    assert req.messages == (Message("user", "hi"),)
    assert parse_responses(body(tool_choice="none")).model == "m"


def test_text_format_structured_outputs_parsed() -> None:
    req = parse_responses(body(text={"format": {"type": "json_schema", "name": "x",
                                                "schema": {"type": "object"}}}))
    assert req.response_format is not None and req.response_format.kind == "json_schema"
    req = parse_responses(body(text={"format": {"type": "json_object"}}))
    assert req.response_format is not None and req.response_format.kind == "json_object"


@pytest.mark.parametrize("fmt", [{"type": "yaml"}, "json"])
def test_text_format_unknown_type(fmt: Any) -> None:
    assert_invalid(body(text={"format": fmt}), "text.format.type", "invalid_request_error")


def test_text_format_text_accepted() -> None:
    assert parse_responses(body(text={"format": {"type": "text"}})).model == "m"
    assert parse_responses(body(text={"verbosity": "medium"})).model == "m"
    assert parse_responses(body(text=None)).model == "m"


def test_ignored_extras_accepted() -> None:
    req = parse_responses(body(store=False, metadata={"k": "v"}, user="u", parallel_tool_calls=False,
                               truncation="disabled", reasoning={"effort": "low"}, service_tier="auto",
                               prompt_cache_key="k", safety_identifier="s"))
    assert req.messages == (Message("user", "hi"),)


@pytest.mark.parametrize("key", ["messages", "max_tokens", "stop", "top_k", "n"])
def test_unknown_top_level_field_refused(key: str) -> None:
    assert_invalid(body(**{key: 1}), key, "unknown_parameter")


@pytest.mark.parametrize("model", ["", 5, None, "x" * 257])
def test_bad_model(model: Any) -> None:
    b = body(model=model) if model is not None else without(body(), "model")
    assert_invalid(b, "model")


# --- limits and sampling -----------------------------------------------------------------


def test_max_output_tokens_becomes_max_tokens() -> None:
    assert parse_responses(body(max_output_tokens=100)).max_tokens == 100
    assert parse_responses(body(max_output_tokens=MAX_OUTPUT_TOKENS)).max_tokens == MAX_OUTPUT_TOKENS


@pytest.mark.parametrize("value", [0, -1, MAX_OUTPUT_TOKENS + 1, 1.5, "10", True])
def test_bad_max_output_tokens(value: Any) -> None:
    assert_invalid(body(max_output_tokens=value), "max_output_tokens")


@pytest.mark.parametrize("value", [0, 1, 1.5, 2])
def test_temperature_range(value: float) -> None:
    assert parse_responses(body(temperature=value)).sampling.temperature == float(value)


@pytest.mark.parametrize("value", [-0.01, 2.01, "1", True, float("nan")])
def test_temperature_out_of_range(value: Any) -> None:
    assert_invalid(body(temperature=value), "temperature")


def test_top_p() -> None:
    assert parse_responses(body(top_p=0.5)).sampling.top_p == 0.5
    assert_invalid(body(top_p=0), "top_p")
    assert_invalid(body(top_p=1.5), "top_p")


def test_stream_flag() -> None:
    assert parse_responses(body(stream=True)).stream is True
    assert parse_responses(body(stream=False)).stream is False
    assert_invalid(body(stream="yes"), "stream")


# --- privacy: error messages never echo content -----------------------------------------


@pytest.mark.parametrize("overrides", [
    {"input": [msg("user", CANARY), msg("wizard", "x")]},
    {"input": [msg("user", CANARY), msg("user", 5)]},
    {"input": [msg("user", [{"type": "input_text", "text": CANARY},
                            {"type": "input_image", "image_url": f"data:image/png;base64,{CANARY}"}])]},
    {"input": [msg("user", CANARY), {"type": "function_call_output", "call_id": "c", "output": CANARY}]},
    {"input": [msg("user", CANARY), {"type": "function_call", "call_id": "c", "name": "f",
                                     "arguments": CANARY}]},
    {"input": [msg("user", [{"type": "input_text", "text": {"nested": CANARY}}])]},
    {"input": CANARY, "temperature": 3},
    {"input": CANARY, "max_output_tokens": 0},
    {"input": CANARY, "text": {"format": {"type": "json_schema", "schema": {"description": CANARY}}}},
    {"input": CANARY, "instructions": CANARY, "previous_response_id": "resp_1"},
    {"instructions": CANARY, "input": []},
])
def test_errors_never_echo_content(overrides: dict[str, Any]) -> None:
    err = invalid(body(**overrides))
    assert CANARY not in err.message
    assert CANARY not in str(err)
    assert CANARY not in (err.param or "")
