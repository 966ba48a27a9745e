"""Validation of Anthropic Messages request bodies, POST /v1/messages (api.md §3.5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.anthropic_request import parse_messages
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.grammar import grammar_for
from darkbloom.inference.request import MAX_MESSAGES, Message, Sampling
from darkbloom.inference.tools import Tool, ToolChoice

CANARY = "CANARY-7f3a9c-do-not-echo"


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    base.update(overrides)
    return base


def without(b: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in b.items() if k != key}


def invalid(b: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_messages(b)
    err = info.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    return err


def assert_invalid(b: dict[str, Any], param: str, code: str = "invalid_request_error") -> InvalidRequest:
    err = invalid(b)
    assert (err.param, err.code) == (param, code), err.message
    return err


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# --- happy path and defaults -------------------------------------------------------------


def test_minimal_body_and_defaults() -> None:
    req = parse_messages(body())
    assert req.endpoint == "/v1/messages"
    assert req.model == "m"
    assert req.messages == (Message("user", "hi"),)
    assert req.prompt is None
    assert req.max_tokens == 64
    assert req.stop == ()
    assert req.stream is False
    assert req.include_usage is False
    assert req.sampling == Sampling()
    assert req.sampling.temperature == 0.7
    assert req.sampling.top_p == 0.9
    assert req.sampling.top_k == 0


def test_conversation_roles_in_order() -> None:
    messages = [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    req = parse_messages(body(messages=messages))
    assert req.messages == (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))


def test_sampling_values_are_parsed() -> None:
    req = parse_messages(body(temperature=0.2, top_p=0.5, top_k=40))
    assert req.sampling == Sampling(temperature=0.2, top_p=0.5, top_k=40)
    assert isinstance(req.sampling.temperature, float)


def test_null_sampling_fields_are_defaults() -> None:
    req = parse_messages(body(temperature=None, top_p=None, top_k=None, stop_sequences=None, stream=None))
    assert req.sampling == Sampling()
    assert req.stop == ()
    assert req.stream is False


# --- model and max_tokens ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["", 5, None, ["m"], "x" * 257])
def test_bad_model(model: Any) -> None:
    b = body(model=model) if model is not None else without(body(), "model")
    assert_invalid(b, "model")


def test_max_tokens_is_required() -> None:
    err = assert_invalid(without(body(), "max_tokens"), "max_tokens")
    assert "max_tokens" in err.message
    err = assert_invalid(body(max_tokens=None), "max_tokens")
    assert "max_tokens" in err.message


@pytest.mark.parametrize("value", [0, -1, MAX_OUTPUT_TOKENS + 1, 1.5, "10", True, [10]])
def test_max_tokens_rules(value: Any) -> None:
    err = assert_invalid(body(max_tokens=value), "max_tokens")
    assert "max_tokens" in err.message


@pytest.mark.parametrize("value", [1, MAX_OUTPUT_TOKENS])
def test_max_tokens_bounds_inclusive(value: int) -> None:
    assert parse_messages(body(max_tokens=value)).max_tokens == value


# --- system ------------------------------------------------------------------------------


def test_system_string_becomes_leading_system_message() -> None:
    req = parse_messages(body(system="be brief"))
    assert req.messages == (Message("system", "be brief"), Message("user", "hi"))


def test_empty_system_string_adds_nothing() -> None:
    assert parse_messages(body(system="")).messages == (Message("user", "hi"),)


def test_system_text_blocks_become_leading_system_message() -> None:
    blocks = [{"type": "text", "text": "be "}, {"type": "text", "text": "brief",
                                                "cache_control": {"type": "ephemeral"}}]
    req = parse_messages(body(system=blocks))
    assert req.messages[0] == Message("system", "be \nbrief")  # one block a line
    assert req.messages[1:] == (Message("user", "hi"),)


@pytest.mark.parametrize("system", [5, {"type": "text", "text": "x"}, True])
def test_system_wrong_type(system: Any) -> None:
    assert_invalid(body(system=system), "system")


def test_system_image_block_unsupported() -> None:
    blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]
    assert_invalid(body(system=blocks), "system.0.type", "unsupported_parameter")


# --- messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [None, "hi", {"role": "user", "content": "hi"}, 3])
def test_messages_missing_or_not_an_array(messages: Any) -> None:
    b = body(messages=messages) if messages is not None else without(body(), "messages")
    assert_invalid(b, "messages")


def test_empty_messages() -> None:
    assert_invalid(body(messages=[]), "messages")


def test_message_count_limit() -> None:
    one = user("x")
    assert len(parse_messages(body(messages=[one] * MAX_MESSAGES)).messages) == MAX_MESSAGES
    assert_invalid(body(messages=[one] * (MAX_MESSAGES + 1)), "messages")


@pytest.mark.parametrize("item", ["hi", None, 1, ["user", "hi"]])
def test_message_not_an_object(item: Any) -> None:
    assert_invalid(body(messages=[user("ok"), item]), "messages.1")


@pytest.mark.parametrize("role", ["system", "developer", "tool", "User", "", None, 1, ["user"]])
def test_role_other_than_user_or_assistant(role: Any) -> None:
    item = {"content": "hi"} if role is None else {"role": role, "content": "hi"}
    assert_invalid(body(messages=[item]), "messages.0.role")


def test_string_content() -> None:
    assert parse_messages(body(messages=[user("hello")])).messages == (Message("user", "hello"),)


def test_text_blocks_are_joined_with_newlines() -> None:
    blocks = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    assert parse_messages(body(messages=[user(blocks)])).messages == (Message("user", "Hello, \nworld"),)
    one = [{"type": "text", "text": "Hello, world"}]
    assert parse_messages(body(messages=[user(one)])).messages == (Message("user", "Hello, world"),)


@pytest.mark.parametrize("content", [None, 5, {"type": "text", "text": "hi"}, True])
def test_content_wrong_type(content: Any) -> None:
    item = {"role": "user"} if content is None else user(content)
    assert_invalid(body(messages=[item]), "messages.0.content")


def test_thinking_blocks_are_skipped() -> None:
    assistant = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "let me think", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "answer"},
    ]}
    req = parse_messages(body(messages=[user("q"), assistant, user("more")]))
    assert req.messages == (Message("user", "q"), Message("assistant", "answer"), Message("user", "more"))


@pytest.mark.parametrize("block", [
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}},
])
def test_unsupported_blocks(block: dict[str, Any]) -> None:
    blocks = [{"type": "text", "text": "look"}, block]
    err = assert_invalid(body(messages=[user(blocks)]), "messages.0.content.1.type", "unsupported_parameter")
    assert block["type"] in err.message


@pytest.mark.parametrize("block", [
    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
])
def test_tool_blocks_unsupported_in_system_and_inside_a_tool_result(block: dict[str, Any]) -> None:
    """Tool blocks belong in turns: in ``system`` or nested in a tool_result they are refused."""
    system = [{"type": "text", "text": "s"}, block]
    err = assert_invalid(body(system=system), "system.1.type", "unsupported_parameter")
    assert block["type"] in err.message
    nested = {"type": "tool_result", "tool_use_id": "toolu_0", "content": [block]}
    assert_invalid(body(messages=[user([nested])]), "messages.0.content.0.content.0.type",
                   "unsupported_parameter")


@pytest.mark.parametrize("kind", ["video", "input_text", "Text", ""])
def test_unknown_block_type(kind: str) -> None:
    err = assert_invalid(body(messages=[user([{"type": kind, "text": "x"}])]), "messages.0.content.0.type")
    assert err.code == "invalid_request_error"


@pytest.mark.parametrize("block", ["text", None, {"text": "hi"}, {"type": 1, "text": "hi"}])
def test_block_without_type(block: Any) -> None:
    assert_invalid(body(messages=[user([block])]), "messages.0.content.0")


@pytest.mark.parametrize("block", [{"type": "text"}, {"type": "text", "text": 5},
                                   {"type": "text", "text": None}])
def test_text_block_without_string_text(block: dict[str, Any]) -> None:
    assert_invalid(body(messages=[user("a"), {"role": "assistant", "content": [block]}]),
                   "messages.1.content.0.text")


# --- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.01, 2, -0.01, "0.5", True, float("nan"), float("inf")])
def test_temperature_anthropic_range(value: Any) -> None:
    assert_invalid(body(temperature=value), "temperature")


@pytest.mark.parametrize("value", [0, 0.5, 1])
def test_temperature_bounds_inclusive(value: float) -> None:
    assert parse_messages(body(temperature=value)).sampling.temperature == float(value)


@pytest.mark.parametrize("value", [0, -0.1, 1.01, "1"])
def test_bad_top_p(value: Any) -> None:
    assert_invalid(body(top_p=value), "top_p")


@pytest.mark.parametrize("value", [-1, -100, 1.5, "5", True])
def test_bad_top_k(value: Any) -> None:
    assert_invalid(body(top_k=value), "top_k")


def test_top_k_zero_accepted() -> None:
    assert parse_messages(body(top_k=0)).sampling.top_k == 0


# --- stop_sequences ----------------------------------------------------------------------


def test_stop_sequences_list() -> None:
    assert parse_messages(body(stop_sequences=["\n\nHuman:", "END"])).stop == ("\n\nHuman:", "END")
    assert parse_messages(body(stop_sequences=["a", "b", "c", "d"])).stop == ("a", "b", "c", "d")
    assert parse_messages(body(stop_sequences=[])).stop == ()


def test_stop_sequences_bare_string_refused() -> None:
    assert_invalid(body(stop_sequences="END"), "stop_sequences")


@pytest.mark.parametrize("value", [["a", "b", "c", "d", "e"], [""], [1], ["a", None], 5, {"a": 1}])
def test_bad_stop_sequences(value: Any) -> None:
    assert_invalid(body(stop_sequences=value), "stop_sequences")


# --- stream ------------------------------------------------------------------------------


def test_stream_flag() -> None:
    assert parse_messages(body(stream=True)).stream is True
    assert parse_messages(body(stream=False)).stream is False


@pytest.mark.parametrize("value", ["true", 1, [True]])
def test_stream_not_boolean(value: Any) -> None:
    assert_invalid(body(stream=value), "stream")


# --- top-level keys ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["messages_extra", "prompt", "n", "max_completion_tokens", "stop",
                                 "frequency_penalty"])
def test_unknown_top_level_field_refused(key: str) -> None:
    assert_invalid(body(**{key: 1}), key, "unknown_parameter")


def test_anthropic_extras_accepted() -> None:
    req = parse_messages(body(metadata={"user_id": "u-1"}, service_tier="auto",
                              thinking={"type": "enabled", "budget_tokens": 1024}))
    assert req.messages == (Message("user", "hi"),)
    assert parse_messages(body(thinking={"type": "disabled"})).model == "m"


def test_tools_are_parsed() -> None:
    tools = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}]
    req = parse_messages(body(tools=tools))
    assert req.tools == (Tool("get_weather", "w", '{"type": "object"}'),)
    assert req.tool_choice == ToolChoice("auto")


def test_empty_tools_and_tool_choice_none_accepted() -> None:
    req = parse_messages(body(tools=[]))
    assert (req.tools, req.tool_choice) == ((), ToolChoice("none"))
    assert parse_messages(body(tool_choice={"type": "none"})).tool_choice == ToolChoice("none")


@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"}])
def test_tool_choice_other_than_none_needs_tools(choice: dict[str, Any]) -> None:
    err = assert_invalid(body(tool_choice=choice), "tool_choice")
    assert "requires tools" in err.message
    assert_invalid(body(tools=[], tool_choice=choice), "tool_choice")


# --- tools -------------------------------------------------------------------------------

WEATHER = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER},
    {"type": "custom", "name": "get_time", "input_schema": {"type": "object"}},
]


def test_tools_parsed_into_tools_with_parameters_in_their_order() -> None:
    req = parse_messages(body(tools=TOOLS))
    assert req.tools == (Tool("get_weather", "Weather for a city", json.dumps(WEATHER)),
                         Tool("get_time", "", '{"type": "object"}'))
    assert req.tools[0].parameters == ('{"type": "object", "required": ["city"], '
                                       '"properties": {"city": {"type": "string"}}}')
    assert req.tool_choice == ToolChoice("auto")


@pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "text_editor_20250124",
                                  "computer_20241022", "function", ""])
def test_server_tools_unsupported(kind: str) -> None:
    tools = [TOOLS[0], {"type": kind, "name": "srv", "input_schema": {}}]
    assert_invalid(body(tools=tools), "tools.1.type", "unsupported_parameter")


@pytest.mark.parametrize(("tools", "param"), [
    ({"name": "f", "input_schema": {}}, "tools"),
    (["f"], "tools.0"),
    ([{"name": "f"}], "tools.0.input_schema"),
    ([{"name": "f", "description": "d"}], "tools.0.input_schema"),
    ([{"name": "f", "input_schema": "{}"}], "tools.0.input_schema"),
    ([{"name": "f", "input_schema": []}], "tools.0.input_schema"),
    ([{"name": "f", "input_schema": 5}], "tools.0.input_schema"),
    ([{"name": "f", "input_schema": {"type": "string"}}], "tools.0"),
    ([{"name": "f", "input_schema": {"type": "array", "items": {}}}], "tools.0"),
    ([{"input_schema": {}}], "tools.0.name"),
    ([{"name": "get weather", "input_schema": {}}], "tools.0.name"),
    ([{"name": "x" * 65, "input_schema": {}}], "tools.0.name"),
    ([{"name": "f", "description": 1, "input_schema": {}}], "tools.0.description"),
    ([TOOLS[0], {"name": "get_weather", "input_schema": {}}], "tools"),
])
def test_bad_tools(tools: Any, param: str) -> None:
    assert_invalid(body(tools=tools), param)


def test_at_most_128_tools() -> None:
    tools = [{"name": f"t{i}", "input_schema": {"type": "object"}} for i in range(129)]
    assert len(parse_messages(body(tools=tools[:128])).tools) == 128
    assert_invalid(body(tools=tools), "tools")


@pytest.mark.parametrize("tool", [{"name": "f", "input_schema": None}, {"name": "f"}])
def test_null_or_missing_input_schema_refused(tool: dict[str, Any]) -> None:
    err = assert_invalid(body(tools=[tool]), "tools.0.input_schema")
    assert err.message == "tools.0.input_schema: Field required"


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "none"}, ToolChoice("none")),
    ({"type": "auto"}, ToolChoice("auto")),
    ({"type": "auto", "disable_parallel_tool_use": True}, ToolChoice("auto")),
    ({"type": "any"}, ToolChoice("required")),
    ({"type": "tool", "name": "get_time"}, ToolChoice("required", "get_time")),
])
def test_tool_choice_with_tools(choice: dict[str, Any], expected: ToolChoice) -> None:
    req = parse_messages(body(tools=TOOLS, tool_choice=choice))
    assert req.tool_choice == expected
    assert len(req.tools) == 2


def test_named_tool_choice_must_name_a_tool_in_tools() -> None:
    err = assert_invalid(body(tools=TOOLS, tool_choice={"type": "tool", "name": "get_stock"}), "tool_choice")
    assert "not in tools" in err.message


@pytest.mark.parametrize("choice", ["auto", "any", "none", 1, [], {}, {"type": "required"},
                                    {"type": "tool"}, {"type": "tool", "name": 5},
                                    {"type": "function", "function": {"name": "get_time"}}])
def test_malformed_tool_choice(choice: Any) -> None:
    assert_invalid(body(tools=TOOLS, tool_choice=choice), "tool_choice")


def test_tool_use_and_tool_result_written_into_the_prompt() -> None:
    messages = [
        user("Weather in Paris?"),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "use the tool", "signature": "s"},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        user([{"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"}]),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_b", "name": "get_time"}]},
        user([{"type": "tool_result", "tool_use_id": "toolu_b",
               "content": [{"type": "text", "text": "12:"}, {"type": "text", "text": "00"}]}]),
        user([{"type": "tool_result", "tool_use_id": "toolu_unknown", "is_error": True}]),
    ]
    req = parse_messages(body(messages=messages, tools=TOOLS))
    assert req.messages == (
        Message("user", "Weather in Paris?"),
        Message("assistant", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        Message("user", "Result of get_weather: sunny"),
        Message("assistant", '{"name": "get_time", "arguments": {}}'),
        Message("user", "Result of get_time: 12:\n00"),
        Message("user", "Result of toolu_unknown: "),
    )


def test_several_tool_blocks_in_one_turn_stay_apart() -> None:
    messages = [
        user("Weather and time?"),
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "b", "name": "get_time", "input": {}},
        ]},
        user([{"type": "tool_result", "tool_use_id": "a", "content": "sunny"},
              {"type": "tool_result", "tool_use_id": "b", "content": "noon"}]),
    ]
    req = parse_messages(body(messages=messages, tools=TOOLS))
    assert req.messages[1].content.split("\n") == [
        "Let me check.", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_time", "arguments": {}}']
    assert req.messages[2].content.split("\n") == ["Result of get_weather: sunny", "Result of get_time: noon"]


@pytest.mark.parametrize(("block", "param"), [
    ({"type": "tool_use", "id": "t", "input": {}}, "messages.0.content.0"),
    ({"type": "tool_use", "id": "t", "name": 5, "input": {}}, "messages.0.content.0"),
    ({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, "messages.0.content.0"),
    ({"type": "tool_result", "content": "42"}, "messages.0.content.0.tool_use_id"),
    ({"type": "tool_result", "tool_use_id": 5, "content": "42"}, "messages.0.content.0.tool_use_id"),
    ({"type": "tool_result", "tool_use_id": "t", "content": 42}, "messages.0.content.0.content"),
    ({"type": "tool_result", "tool_use_id": "t", "content": {"type": "text", "text": "42"}},
     "messages.0.content.0.content"),
    ({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]},
     "messages.0.content.0.content.0.text"),
])
def test_malformed_tool_blocks(block: dict[str, Any], param: str) -> None:
    assert_invalid(body(messages=[user([block])]), param)


@pytest.mark.parametrize(("choice", "forced"), [
    ({"type": "none"}, False), ({"type": "auto"}, False), ({"type": "any"}, True),
    ({"type": "tool", "name": "get_time"}, True),
])
def test_grammar_only_for_a_forced_call(choice: dict[str, Any], forced: bool) -> None:
    grammar = grammar_for(parse_messages(body(tools=TOOLS, tool_choice=choice)))
    if not forced:
        assert grammar is None
        return
    assert isinstance(grammar, str) and "root ::=" in grammar and '\\"get_time\\"' in grammar
    assert ('\\"get_weather\\"' in grammar) == (choice["type"] == "any")


UNENFORCEABLE = {"not": {"type": "string"}}


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "odd"}])
def test_parse_request_refuses_a_forced_call_it_cannot_enforce(choice: dict[str, Any]) -> None:
    tools = [*TOOLS, {"name": "odd", "input_schema": UNENFORCEABLE}]
    with pytest.raises(InvalidRequest) as info:
        parse_request("/v1/messages", body(tools=tools, tool_choice=choice))
    err = info.value
    assert (err.status_code, err.param, err.code) == (400, "tools", "unsupported_parameter")


def test_parse_request_accepts_an_unenforceable_schema_when_not_forced() -> None:
    tools = [*TOOLS, {"name": "odd", "input_schema": UNENFORCEABLE}]
    assert len(parse_request("/v1/messages", body(tools=tools)).tools) == 3
    named = parse_request("/v1/messages", body(tools=tools, tool_choice={"type": "tool", "name": "get_time"}))
    assert named.tool_choice == ToolChoice("required", "get_time")


# --- privacy: error messages never echo content -----------------------------------------


@pytest.mark.parametrize("overrides", [
    {"messages": [user(CANARY), {"role": "system", "content": "x"}]},
    {"messages": [user(CANARY), {"role": "assistant", "content": 5}]},
    {"messages": [user([{"type": "text", "text": CANARY}, {"type": "image", "source": {"data": CANARY}}])]},
    {"messages": [user([{"type": "text", "text": CANARY}, {"type": "video", "data": CANARY}])]},
    {"messages": [user([{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "text", "text": CANARY}, {"type": "image", "source": CANARY}]}])]},
    {"messages": [user([{"type": "tool_result", "content": CANARY}])]},
    {"messages": [user([{"type": "tool_use", "id": "t", "name": "f", "input": CANARY}])]},
    {"messages": [user([{"type": "text", "text": {"nested": CANARY}}])]},
    {"messages": [user(CANARY)], "temperature": 1.5},
    {"messages": [user(CANARY)], "max_tokens": 0},
    {"messages": [user(CANARY)], "stop_sequences": "x"},
    {"messages": [user(CANARY)], "tools": [{"name": "f", "description": CANARY}]},
    {"messages": [user(CANARY)], "tools": [{"name": "f", "description": CANARY, "input_schema": [CANARY]}]},
    {"messages": [user(CANARY)], "tools": [{"name": f"{CANARY} x", "input_schema": {}}]},
    {"system": CANARY, "messages": "not a list"},
    {"system": [{"type": "text", "text": CANARY}, {"type": "document", "source": {"data": CANARY}}]},
])
def test_errors_never_echo_content(overrides: dict[str, Any]) -> None:
    err = invalid(body(**overrides))
    assert CANARY not in err.message
    assert CANARY not in str(err)
    assert CANARY not in (err.param or "")
