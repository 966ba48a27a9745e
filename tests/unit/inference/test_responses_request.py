"""Validation of OpenAI Responses request bodies, POST /v1/responses (api.md §3.3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.grammar import grammar_for
from darkbloom.inference.request import MAX_MESSAGES, Message, Sampling
from darkbloom.inference.responses_request import parse_responses
from darkbloom.inference.tools import Tool, ToolChoice

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


@pytest.mark.parametrize(("item", "expected"), [
    ({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
     Message("assistant", '{"name": "f", "arguments": {}}')),
    ({"type": "function_call_output", "call_id": "call_1", "output": "42"},
     Message("tool", "Result of call_1: 42")),
])
def test_function_call_items_become_messages(item: dict[str, Any], expected: Message) -> None:
    req = parse_responses(body(input=[msg("user", "q"), item]))
    assert req.messages == (Message("user", "q"), expected)


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
])
def test_unsupported_fields(key: str, value: Any) -> None:
    assert_invalid(body(**{key: value}), key, "unsupported_parameter")


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": []},
                                  {"type": "custom", "name": "f"}, {"name": "f", "parameters": {}}])
def test_non_function_tools_unsupported(tool: dict[str, Any]) -> None:
    tools = [{"type": "function", "name": "f", "parameters": {}}, tool]
    assert_invalid(body(tools=tools), "tools[1].type", "unsupported_parameter")


def test_function_tools_parsed() -> None:
    req = parse_responses(body(tools=[{"type": "function", "name": "f", "parameters": {}}]))
    assert req.tools == (Tool("f", "", "{}"),)
    assert req.tool_choice == ToolChoice("auto")


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "name": "f"}])
def test_tool_choice_other_than_none_needs_tools(choice: Any) -> None:
    err = assert_invalid(body(tool_choice=choice), "tool_choice")
    assert "requires tools" in err.message
    assert_invalid(body(tools=[], tool_choice=choice), "tool_choice")


def test_harmless_values_of_unsupported_fields_accepted() -> None:
    req = parse_responses(body(previous_response_id=None, top_logprobs=None, background=False, include=[],
                               tools=[], tool_choice="none"))
    assert req.messages == (Message("user", "hi"),)
    assert (req.tools, req.tool_choice) == ((), ToolChoice("none"))
    assert parse_responses(body(tool_choice="none")).tool_choice == ToolChoice("none")


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


# --- tools -------------------------------------------------------------------------------

WEATHER = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER,
     "strict": True},
    {"type": "function", "name": "get_time"},
]


def test_tools_parsed_into_tools_with_parameters_in_their_order() -> None:
    req = parse_responses(body(tools=TOOLS))
    assert req.tools == (Tool("get_weather", "Weather for a city", json.dumps(WEATHER)),
                         Tool("get_time", "", '{"type": "object", "properties": {}}'))
    assert req.tools[0].parameters == ('{"type": "object", "required": ["city"], '
                                       '"properties": {"city": {"type": "string"}}}')
    assert req.tool_choice == ToolChoice("auto")


@pytest.mark.parametrize(("tools", "param"), [
    ({"type": "function", "name": "f"}, "tools"),
    ([{"type": "function", "function": {"name": "f"}}], "tools[0].name"),
    ([{"type": "function", "name": ""}], "tools[0].name"),
    ([{"type": "function", "name": "a/b"}], "tools[0].name"),
    ([{"type": "function", "name": "x" * 65}], "tools[0].name"),
    ([{"type": "function", "name": "f", "description": ["d"]}], "tools[0].description"),
    ([{"type": "function", "name": "f", "parameters": "{}"}], "tools[0]"),
    ([{"type": "function", "name": "f", "parameters": {"type": "string"}}], "tools[0]"),
    ([{"type": "function", "name": "f\n"}], "tools[0].name"),
    ([TOOLS[0], {"type": "function", "name": "get_weather"}], "tools"),
])
def test_bad_tools(tools: Any, param: str) -> None:
    assert_invalid(body(tools=tools), param)


@pytest.mark.parametrize("tool", ["f", None, 1])
def test_tool_not_an_object(tool: Any) -> None:
    assert invalid(body(tools=[tool])).param == "tools[0].type"


def test_at_most_128_tools() -> None:
    tools = [{"type": "function", "name": f"t{i}"} for i in range(129)]
    assert len(parse_responses(body(tools=tools[:128])).tools) == 128
    assert_invalid(body(tools=tools), "tools")


@pytest.mark.parametrize(("choice", "expected"), [
    ("none", ToolChoice("none")),
    ("auto", ToolChoice("auto")),
    ("required", ToolChoice("required")),
    ({"type": "function", "name": "get_time"}, ToolChoice("required", "get_time")),
])
def test_tool_choice_with_tools(choice: Any, expected: ToolChoice) -> None:
    req = parse_responses(body(tools=TOOLS, tool_choice=choice))
    assert req.tool_choice == expected
    assert len(req.tools) == 2


def test_named_tool_choice_must_name_a_tool_in_tools() -> None:
    err = assert_invalid(body(tools=TOOLS, tool_choice={"type": "function", "name": "get_stock"}),
                         "tool_choice")
    assert "not in tools" in err.message


@pytest.mark.parametrize("choice", [
    "any", "", 1, [], {"type": "function"}, {"type": "function", "name": 5},
    {"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"},
    {"type": "allowed_tools", "mode": "auto", "tools": []}, {"type": "web_search"},
])
def test_malformed_tool_choice(choice: Any) -> None:
    assert_invalid(body(tools=TOOLS, tool_choice=choice), "tool_choice")


def test_function_calls_and_outputs_written_into_the_prompt() -> None:
    items = [
        msg("user", "Weather in Paris, and the time?"),
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "not json"},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": "12:00"},
        {"type": "function_call", "name": "get_time"},
        {"type": "function_call_output", "call_id": "call_z", "output": "later"},
    ]
    req = parse_responses(body(input=items, tools=TOOLS))
    assert req.messages == (
        Message("user", "Weather in Paris, and the time?"),
        Message("assistant", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        Message("assistant", '{"name": "get_time", "arguments": "not json"}'),
        Message("tool", "Result of get_weather: sunny"),
        Message("tool", "Result of get_time: 12:00"),
        Message("assistant", '{"name": "get_time", "arguments": ""}'),
        Message("tool", "Result of call_z: later"),
    )


@pytest.mark.parametrize("item", [
    {"type": "function_call", "call_id": "c", "arguments": "{}"},
    {"type": "function_call", "call_id": "c", "name": 5, "arguments": "{}"},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
    {"type": "function_call_output", "output": "42"},
    {"type": "function_call_output", "call_id": 5, "output": "42"},
    {"type": "function_call_output", "call_id": "c"},
    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "42"}]},
])
def test_malformed_function_call_items(item: dict[str, Any]) -> None:
    assert_invalid(body(input=[msg("user", "q"), item]), "input[1]")


@pytest.mark.parametrize(("choice", "forced"), [
    ("none", False), ("auto", False), ("required", True), ({"type": "function", "name": "get_time"}, True),
])
def test_grammar_only_for_a_forced_call(choice: Any, forced: bool) -> None:
    grammar = grammar_for(parse_responses(body(tools=TOOLS, tool_choice=choice)))
    if not forced:
        assert grammar is None
        return
    assert isinstance(grammar, str) and "root ::=" in grammar and '\\"get_time\\"' in grammar
    assert ('\\"get_weather\\"' in grammar) == (choice == "required")


def test_forced_call_grammar_wins_over_text_format() -> None:
    fmt = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}
    forced = grammar_for(parse_responses(body(tools=TOOLS, tool_choice="required", text=fmt)))
    assert forced is not None and '\\"get_weather\\"' in forced
    auto = grammar_for(parse_responses(body(tools=TOOLS, text=fmt)))
    assert auto is not None and "get_weather" not in auto


UNENFORCEABLE = {"not": {"type": "string"}}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "odd"}])
def test_parse_request_refuses_a_forced_call_it_cannot_enforce(choice: Any) -> None:
    tools = [*TOOLS, {"type": "function", "name": "odd", "parameters": UNENFORCEABLE}]
    with pytest.raises(InvalidRequest) as info:
        parse_request("/v1/responses", body(tools=tools, tool_choice=choice))
    err = info.value
    assert (err.status_code, err.param, err.code) == (400, "tools", "unsupported_parameter")


def test_parse_request_accepts_an_unenforceable_schema_when_not_forced() -> None:
    tools = [*TOOLS, {"type": "function", "name": "odd", "parameters": UNENFORCEABLE}]
    assert len(parse_request("/v1/responses", body(tools=tools)).tools) == 3
    choice = {"type": "function", "name": "get_time"}
    named = parse_request("/v1/responses", body(tools=tools, tool_choice=choice))
    assert named.tool_choice == ToolChoice("required", "get_time")


# --- privacy: error messages never echo content -----------------------------------------


@pytest.mark.parametrize("overrides", [
    {"input": [msg("user", CANARY), msg("wizard", "x")]},
    {"input": [msg("user", CANARY), msg("user", 5)]},
    {"input": [msg("user", [{"type": "input_text", "text": CANARY},
                            {"type": "input_image", "image_url": f"data:image/png;base64,{CANARY}"}])]},
    {"input": [msg("user", CANARY), {"type": "function_call_output", "output": CANARY}]},
    {"input": [msg("user", CANARY), {"type": "function_call_output", "call_id": "c", "output": [CANARY]}]},
    {"input": [msg("user", CANARY), {"type": "function_call", "call_id": "c", "arguments": CANARY}]},
    {"input": [msg("user", CANARY), {"type": "function_call", "call_id": "c", "name": "f",
                                     "arguments": {"x": CANARY}}]},
    {"input": CANARY, "tools": [{"type": "function", "name": f"{CANARY} x", "description": CANARY}]},
    {"input": CANARY, "tools": [{"type": "function", "name": "f", "description": CANARY,
                                 "parameters": [CANARY]}]},
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
