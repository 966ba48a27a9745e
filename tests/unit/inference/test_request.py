"""Validation of OpenAI-dialect request bodies (api.md §3.1, §3.4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.grammar import grammar_for
from darkbloom.inference.request import (
    DEFAULT_MAX_TOKENS,
    MAX_MESSAGES,
    Message,
    Sampling,
    parse_chat,
    parse_completion,
    parse_json_body,
)
from darkbloom.inference.tools import Tool, ToolChoice

Parser = Callable[[dict[str, Any]], Any]

CANARY_TOOL = "CANARY-tool-9d2e41-do-not-echo"


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


def completion(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}
    body.update(overrides)
    return body


def invalid(parse: Parser, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(body)
    err = info.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    return err


def assert_invalid(parse: Parser, body: dict[str, Any], param: str,
                   code: str = "invalid_request_error") -> InvalidRequest:
    err = invalid(parse, body)
    assert (err.param, err.code) == (param, code), err.message
    return err


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


# --- parse_json_body ---------------------------------------------------------------------


class TestParseJsonBody:
    def test_object_is_returned(self) -> None:
        assert parse_json_body(b'{"model": "m", "n": 1}') == {"model": "m", "n": 1}

    @pytest.mark.parametrize("raw", [b"", b"{", b"{'model': 'm'}", b'{"a": 1,}', b"\xff\xfe\x00garbage",
                                     b"not json at all"])
    def test_malformed_json(self, raw: bytes) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_json_body(raw)
        assert info.value.code == "invalid_json"
        assert info.value.param is None
        assert info.value.status_code == 400

    @pytest.mark.parametrize("raw", [b"[]", b'[{"model": "m"}]', b'"m"', b"null", b"3", b"true"])
    def test_non_object_body(self, raw: bytes) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_json_body(raw)
        assert info.value.code == "invalid_json"
        assert "object" in info.value.message

    def test_deeply_nested_malformed_json_is_invalid_json(self) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_json_body(b"[" * 100_000)
        assert info.value.code == "invalid_json"


# --- parse_request -----------------------------------------------------------------------


def test_parse_request_routes_by_endpoint() -> None:
    assert parse_request("/v1/chat/completions", chat()).endpoint == "/v1/chat/completions"
    assert parse_request("/v1/completions", completion()).endpoint == "/v1/completions"


def test_parse_request_unknown_endpoint() -> None:
    with pytest.raises(InvalidRequest):
        parse_request("/v1/embeddings", {"model": "m"})


# --- chat: happy path and defaults ------------------------------------------------------


def test_chat_minimal_body_and_defaults() -> None:
    req = parse_chat(chat())
    assert req.endpoint == "/v1/chat/completions"
    assert req.model == "m"
    assert req.messages == (Message("user", "hi"),)
    assert req.prompt is None
    assert req.max_tokens is None
    assert req.stop == ()
    assert req.stream is False
    assert req.include_usage is False
    assert req.sampling == Sampling()
    assert req.sampling.temperature == 0.7
    assert req.sampling.top_p == 0.9
    assert req.sampling.top_k == 0
    assert req.sampling.min_p == 0.0
    assert req.sampling.presence_penalty == 0.0
    assert req.sampling.frequency_penalty == 0.0
    assert req.sampling.repetition_penalty == 1.0
    assert req.sampling.seed is None


def test_default_max_tokens_constant() -> None:
    assert DEFAULT_MAX_TOKENS == 8192
    assert MAX_OUTPUT_TOKENS == 32_768


def test_chat_all_roles_and_developer_becomes_system() -> None:
    messages: list[dict[str, Any]] = [{"role": r, "content": r}
                                      for r in ("system", "developer", "user", "assistant", "tool")]
    messages[-1]["tool_call_id"] = "call_1"
    req = parse_chat(chat(messages=messages))
    assert [m.role for m in req.messages] == ["system", "system", "user", "assistant", "tool"]
    # A result whose call is not in the history is labelled with its id.
    assert [m.content for m in req.messages] == ["system", "developer", "user", "assistant",
                                                 "Result of call_1: tool"]


@pytest.mark.parametrize("call_id", [None, 5, ["call_1"]])
def test_chat_tool_message_needs_a_tool_call_id(call_id: Any) -> None:
    item: dict[str, Any] = {"role": "tool", "content": "42"}
    if call_id is not None:
        item["tool_call_id"] = call_id
    assert_invalid(parse_chat, chat(messages=[item]), "messages[0].tool_call_id")


def test_chat_sampling_values_are_parsed() -> None:
    req = parse_chat(chat(temperature=0, top_p=1, top_k=40, min_p=0.05, presence_penalty=-2,
                          frequency_penalty=2, repetition_penalty=1.1, seed=-(2**63)))
    assert req.sampling == Sampling(temperature=0.0, top_p=1.0, top_k=40, min_p=0.05,
                                    presence_penalty=-2.0, frequency_penalty=2.0,
                                    repetition_penalty=1.1, seed=-(2**63))
    assert isinstance(req.sampling.temperature, float)


def test_chat_ignored_parameters_are_accepted() -> None:
    req = parse_chat(chat(user="u", metadata={"a": "b"}, store=False, service_tier="auto",
                          parallel_tool_calls=True, prompt_cache_key="k", safety_identifier="s"))
    assert req.model == "m"


def test_chat_null_optional_fields_are_defaults() -> None:
    req = parse_chat(chat(temperature=None, top_p=None, max_tokens=None, stop=None, stream=None,
                          stream_options=None, n=None, response_format=None, tools=None,
                          tool_choice=None, logprobs=None, top_logprobs=None, seed=None))
    assert req.sampling == Sampling()
    assert req.stream is False
    assert req.max_tokens is None


# --- chat: model -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["", 5, None, ["m"], "x" * 257])
def test_chat_bad_model(model: Any) -> None:
    body = chat(model=model) if model is not None else without(chat(), "model")
    assert_invalid(parse_chat, body, "model")


def test_chat_model_256_chars_ok() -> None:
    assert parse_chat(chat(model="x" * 256)).model == "x" * 256


# --- chat: messages ----------------------------------------------------------------------


def test_chat_missing_messages() -> None:
    assert_invalid(parse_chat, without(chat(), "messages"), "messages")


@pytest.mark.parametrize("messages", ["hi", {"role": "user", "content": "hi"}, 3, None])
def test_chat_messages_not_an_array(messages: Any) -> None:
    assert_invalid(parse_chat, chat(messages=messages), "messages")


def test_chat_empty_messages() -> None:
    err = assert_invalid(parse_chat, chat(messages=[]), "messages")
    assert "at least one" in err.message


def test_chat_message_count_limit() -> None:
    one = {"role": "user", "content": "x"}
    assert len(parse_chat(chat(messages=[one] * MAX_MESSAGES)).messages) == MAX_MESSAGES
    assert_invalid(parse_chat, chat(messages=[one] * (MAX_MESSAGES + 1)), "messages")


@pytest.mark.parametrize("item", ["hi", ["user", "hi"], None, 1])
def test_chat_message_not_an_object(item: Any) -> None:
    messages = [{"role": "user", "content": "ok"}, item]
    assert_invalid(parse_chat, chat(messages=messages), "messages[1]")


@pytest.mark.parametrize("role", [None, 1, ["user"]])
def test_chat_message_role_missing_or_not_string(role: Any) -> None:
    item: dict[str, Any] = {"content": "hi"} if role is None else {"role": role, "content": "hi"}
    assert_invalid(parse_chat, chat(messages=[item]), "messages[0].role")


@pytest.mark.parametrize("role", ["wizard", "User", "function", ""])
def test_chat_message_bad_role(role: str) -> None:
    err = assert_invalid(parse_chat, chat(messages=[{"role": role, "content": "hi"}]), "messages[0].role")
    assert "Supported values" in err.message


def test_chat_bad_role_is_truncated_in_message() -> None:
    role = "r" * 500
    err = assert_invalid(parse_chat, chat(messages=[{"role": role, "content": "hi"}]), "messages[0].role")
    assert role not in err.message


def test_chat_message_with_tool_calls_is_written_into_the_prompt() -> None:
    item = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    req = parse_chat(chat(messages=[item]))
    assert req.messages == (Message("assistant", '{"name": "f", "arguments": {}}'),)


@pytest.mark.parametrize("calls", [
    "f", {"function": {"name": "f"}}, ["f"], [{"id": "c"}], [{"function": "f"}],
    [{"function": {"arguments": "{}"}}], [{"function": {"name": 5, "arguments": "{}"}}],
    [{"function": {"name": "f", "arguments": {"a": 1}}}],
])
def test_chat_malformed_tool_calls(calls: Any) -> None:
    item = {"role": "assistant", "content": None, "tool_calls": calls}
    err = invalid(parse_chat, chat(messages=[item]))
    assert err.param is not None and err.param.startswith("messages[0].tool_calls")
    assert err.code == "invalid_request_error"


def test_chat_message_missing_content() -> None:
    assert_invalid(parse_chat, chat(messages=[{"role": "user"}]), "messages[0].content")
    assert_invalid(parse_chat, chat(messages=[{"role": "assistant", "content": None}]),
                   "messages[0].content")


@pytest.mark.parametrize("content", [5, {"type": "text", "text": "hi"}, True])
def test_chat_message_content_wrong_type(content: Any) -> None:
    assert_invalid(parse_chat, chat(messages=[{"role": "user", "content": content}]), "messages[0].content")


def test_chat_empty_string_content_allowed() -> None:
    assert parse_chat(chat(messages=[{"role": "user", "content": ""}])).messages == (Message("user", ""),)


def test_chat_text_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    req = parse_chat(chat(messages=[{"role": "user", "content": parts}]))
    assert req.messages == (Message("user", "Hello, world"),)


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "f"}},
])
def test_chat_non_text_content_part_unsupported(part: dict[str, Any]) -> None:
    parts = [{"type": "text", "text": "what is this?"}, part]
    err = assert_invalid(parse_chat, chat(messages=[{"role": "user", "content": parts}]),
                         "messages[0].content[1].type", "unsupported_parameter")
    assert part["type"] in err.message


@pytest.mark.parametrize("part", ["text", None, {"text": "hi"}, {"type": 1, "text": "hi"}])
def test_chat_content_part_without_type(part: Any) -> None:
    assert_invalid(parse_chat, chat(messages=[{"role": "user", "content": [part]}]),
                   "messages[0].content[0]")


@pytest.mark.parametrize("part", [{"type": "text"}, {"type": "text", "text": 5},
                                  {"type": "text", "text": None}])
def test_chat_text_part_without_string_text(part: dict[str, Any]) -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": [part]}]
    assert_invalid(parse_chat, chat(messages=messages), "messages[1].content[0].text")


# --- sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.01, 2.01, 3, -1, "1", True, float("nan"), float("inf"), [1]])
def test_temperature_out_of_range_or_not_a_number(value: Any) -> None:
    assert_invalid(parse_chat, chat(temperature=value), "temperature")


@pytest.mark.parametrize("value", [0, 0.0, 1, 2, 2.0])
def test_temperature_bounds_inclusive(value: float) -> None:
    assert parse_chat(chat(temperature=value)).sampling.temperature == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.01, 2, "0.5", False])
def test_top_p_outside_open_closed_unit_interval(value: Any) -> None:
    assert_invalid(parse_chat, chat(top_p=value), "top_p")


@pytest.mark.parametrize("value", [1e-6, 0.5, 1, 1.0])
def test_top_p_accepted(value: float) -> None:
    assert parse_chat(chat(top_p=value)).sampling.top_p == float(value)


@pytest.mark.parametrize(("key", "value"), [
    ("top_k", -1), ("top_k", 1.5), ("top_k", True), ("top_k", "5"),
    ("min_p", -0.1), ("min_p", 1.1),
    ("presence_penalty", -2.1), ("presence_penalty", 2.1),
    ("frequency_penalty", -2.1), ("frequency_penalty", 2.1),
    ("repetition_penalty", 0), ("repetition_penalty", 2.1), ("repetition_penalty", -1),
    ("seed", "1"), ("seed", 1.0), ("seed", True), ("seed", 2**64), ("seed", -(2**63) - 1),
])
def test_other_sampling_rules(key: str, value: Any) -> None:
    assert_invalid(parse_chat, chat(**{key: value}), key)
    assert_invalid(parse_completion, completion(**{key: value}), key)


def test_seed_upper_bound() -> None:
    assert parse_chat(chat(seed=2**64 - 1)).sampling.seed == 2**64 - 1


# --- max tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, MAX_OUTPUT_TOKENS + 1, 10**9, 1.5, 10.0, "10", True, False, [10]])
def test_max_tokens_rules(key: str, value: Any) -> None:
    assert_invalid(parse_chat, chat(**{key: value}), key)


@pytest.mark.parametrize("value", [1, 256, MAX_OUTPUT_TOKENS])
def test_max_tokens_bounds_inclusive(value: int) -> None:
    assert parse_chat(chat(max_tokens=value)).max_tokens == value
    assert parse_chat(chat(max_completion_tokens=value)).max_tokens == value
    assert parse_completion(completion(max_tokens=value)).max_tokens == value


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse_chat(chat(max_tokens=10, max_completion_tokens=20)).max_tokens == 20
    assert parse_chat(chat(max_tokens=20, max_completion_tokens=10)).max_tokens == 10


def test_invalid_max_tokens_fails_even_when_max_completion_tokens_is_set() -> None:
    assert_invalid(parse_chat, chat(max_tokens=0, max_completion_tokens=20), "max_tokens")
    assert_invalid(parse_chat, chat(max_tokens=10, max_completion_tokens=0), "max_completion_tokens")


# --- n -----------------------------------------------------------------------------------


@pytest.mark.parametrize("parse_body", [(parse_chat, chat), (parse_completion, completion)])
@pytest.mark.parametrize("n", [2, 5, 128])
def test_n_greater_than_one_unsupported(parse_body: tuple[Parser, Callable[..., dict[str, Any]]],
                                        n: int) -> None:
    parse, body = parse_body
    assert_invalid(parse, body(n=n), "n", "unsupported_parameter")


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True])
def test_n_not_a_positive_integer(n: Any) -> None:
    assert_invalid(parse_chat, chat(n=n), "n", "invalid_request_error")


def test_n_one_accepted() -> None:
    assert parse_chat(chat(n=1)).model == "m"
    assert parse_completion(completion(n=1)).model == "m"


# --- stop --------------------------------------------------------------------------------


def test_stop_string_becomes_tuple() -> None:
    assert parse_chat(chat(stop="\n")).stop == ("\n",)


def test_stop_list() -> None:
    assert parse_chat(chat(stop=["a", "b", "c", "d"])).stop == ("a", "b", "c", "d")
    assert parse_chat(chat(stop=[])).stop == ()


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [""], "", ["a", ""], [1], ["a", None], 5,
                                  {"a": 1}, True])
def test_bad_stop(stop: Any) -> None:
    assert_invalid(parse_chat, chat(stop=stop), "stop")
    assert_invalid(parse_completion, completion(stop=stop), "stop")


# --- stream ------------------------------------------------------------------------------


def test_stream_true() -> None:
    assert parse_chat(chat(stream=True)).stream is True
    assert parse_chat(chat(stream=False)).stream is False


@pytest.mark.parametrize("stream", ["true", 1, 0, "yes", [True]])
def test_stream_not_boolean(stream: Any) -> None:
    assert_invalid(parse_chat, chat(stream=stream), "stream")
    assert_invalid(parse_completion, completion(stream=stream), "stream")


def test_include_usage() -> None:
    req = parse_chat(chat(stream=True, stream_options={"include_usage": True}))
    assert (req.stream, req.include_usage) == (True, True)
    assert parse_chat(chat(stream=True, stream_options={})).include_usage is False
    assert parse_chat(chat(stream=True, stream_options={"include_usage": False})).include_usage is False
    req = parse_completion(completion(stream=True, stream_options={"include_usage": True}))
    assert req.include_usage is True


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_without_stream(stream: bool | None) -> None:
    body = chat(stream_options={"include_usage": True})
    if stream is not None:
        body["stream"] = stream
    assert_invalid(parse_chat, body, "stream_options")


@pytest.mark.parametrize("options", ["include_usage", True, ["include_usage"]])
def test_stream_options_not_an_object(options: Any) -> None:
    assert_invalid(parse_chat, chat(stream=True, stream_options=options), "stream_options")


@pytest.mark.parametrize("include", ["yes", 1, None])
def test_include_usage_not_boolean(include: Any) -> None:
    assert_invalid(parse_chat, chat(stream=True, stream_options={"include_usage": include}),
                   "stream_options.include_usage")


# --- unknown and unsupported parameters -------------------------------------------------


@pytest.mark.parametrize("key", ["frobnicate", "prompt", "echo", "suffix", "best_of", "functions",
                                 "max_output_tokens"])
def test_chat_unknown_parameter_named(key: str) -> None:
    err = assert_invalid(parse_chat, chat(**{key: 1}), key, "unknown_parameter")
    assert key in err.message


@pytest.mark.parametrize("key", ["frobnicate", "messages", "max_completion_tokens", "tools",
                                 "response_format", "top_logprobs"])
def test_completion_unknown_parameter_named(key: str) -> None:
    assert_invalid(parse_completion, completion(**{key: 1}), key, "unknown_parameter")


def test_unknown_parameter_checked_before_other_fields() -> None:
    assert_invalid(parse_chat, {"bogus": 1}, "bogus", "unknown_parameter")


def test_tools_are_parsed() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    req = parse_chat(chat(tools=tools))
    assert req.tools == (Tool("f", "", '{"type": "object"}'),)
    assert req.tool_choice == ToolChoice("auto")


def test_empty_tools_accepted() -> None:
    req = parse_chat(chat(tools=[]))
    assert (req.tools, req.tool_choice) == ((), ToolChoice("none"))


def test_tool_choice_none_accepted_without_tools() -> None:
    req = parse_chat(chat(tool_choice="none"))
    assert (req.tools, req.tool_choice) == ((), ToolChoice("none"))


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "f"}}])
def test_tool_choice_other_than_none_needs_tools(choice: Any) -> None:
    err = assert_invalid(parse_chat, chat(tool_choice=choice), "tool_choice")
    assert "requires tools" in err.message
    assert_invalid(parse_chat, chat(tools=[], tool_choice=choice), "tool_choice")


def test_chat_logprobs_are_parsed() -> None:
    assert parse_chat(chat()).logprobs is None
    assert parse_chat(chat(logprobs=False)).logprobs is None
    assert parse_chat(chat(logprobs=True)).logprobs == 0
    assert parse_chat(chat(logprobs=True, top_logprobs=2)).logprobs == 2
    assert parse_chat(chat(logprobs=True, top_logprobs=20)).logprobs == 20


@pytest.mark.parametrize(("overrides", "param"), [
    ({"logprobs": 1}, "logprobs"), ({"logprobs": "true"}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
])
def test_chat_bad_logprobs(overrides: dict[str, Any], param: str) -> None:
    assert_invalid(parse_chat, chat(**overrides), param)


@pytest.mark.parametrize(("key", "value"), [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "x"}),
    ("logit_bias", {"50256": -100}),
    ("modalities", ["text", "audio"]),
    ("modalities", ["audio"]),
])
def test_chat_other_unsupported_parameters(key: str, value: Any) -> None:
    assert_invalid(parse_chat, chat(**{key: value}), key, "unsupported_parameter")


@pytest.mark.parametrize(("key", "value"), [
    ("audio", None), ("prediction", None), ("logit_bias", {}), ("modalities", ["text"]), ("modalities", None),
])
def test_chat_neutral_values_of_unsupported_parameters_accepted(key: str, value: Any) -> None:
    assert parse_chat(chat(**{key: value})).model == "m"


def test_response_format_structured_outputs_parsed() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = parse_chat(chat(response_format={"type": "json_schema",
                                           "json_schema": {"name": "x", "schema": schema}}))
    assert req.response_format is not None and req.response_format.kind == "json_schema"
    assert req.response_format.name == "x" and json.loads(req.response_format.schema or "") == schema
    assert req.response_format.schema == json.dumps(schema)  # key order as given, not sorted
    req = parse_chat(chat(response_format={"type": "json_object"}))
    assert req.response_format is not None and req.response_format.kind == "json_object"


@pytest.mark.parametrize(("fmt", "param"), [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
     "response_format.json_schema.schema"),
])
def test_response_format_bad_structured_specs(fmt: dict[str, Any], param: str) -> None:
    assert_invalid(parse_chat, chat(response_format=fmt), param, "invalid_request_error")


def test_response_format_text_accepted() -> None:
    assert parse_chat(chat(response_format={"type": "text"})).model == "m"


@pytest.mark.parametrize("fmt", ["text", {"json_schema": {}}, ["text"]])
def test_response_format_malformed(fmt: Any) -> None:
    assert_invalid(parse_chat, chat(response_format=fmt), "response_format", "invalid_request_error")


# --- completions -------------------------------------------------------------------------


def test_completion_minimal_body_and_defaults() -> None:
    req = parse_completion(completion())
    assert req.endpoint == "/v1/completions"
    assert req.model == "m"
    assert req.prompt == "Once upon a time"
    assert req.messages == ()
    assert req.max_tokens is None
    assert req.stop == ()
    assert (req.stream, req.include_usage) == (False, False)
    assert req.sampling == Sampling(temperature=0.7, top_p=0.9)


def test_completion_prompt_list_of_one() -> None:
    assert parse_completion(completion(prompt=["hello"])).prompt == "hello"


@pytest.mark.parametrize("prompt", [["a", "b"], [], [[1, 2, 3]], [5], [""], "", 5, None, {"text": "a"},
                                    [1, 2, 3]])
def test_completion_bad_prompt(prompt: Any) -> None:
    body = completion(prompt=prompt) if prompt is not None else without(completion(), "prompt")
    assert_invalid(parse_completion, body, "prompt")


def test_completion_batched_prompt_message() -> None:
    err = assert_invalid(parse_completion, completion(prompt=["a", "b"]), "prompt")
    assert "batched" in err.message


@pytest.mark.parametrize(("key", "value"), [
    ("echo", True), ("suffix", "the end"), ("best_of", 2), ("best_of", 0), ("logit_bias", {"50256": -100}),
])
def test_completion_unsupported_parameters(key: str, value: Any) -> None:
    assert_invalid(parse_completion, completion(**{key: value}), key, "unsupported_parameter")


@pytest.mark.parametrize("value", [0, 5])
def test_completion_logprobs_parsed(value: int) -> None:
    assert parse_completion(completion(logprobs=value)).logprobs == value


@pytest.mark.parametrize("value", [-1, 6, 1.0, "2", True])
def test_completion_bad_logprobs(value: Any) -> None:
    assert_invalid(parse_completion, completion(logprobs=value), "logprobs")


@pytest.mark.parametrize(("key", "value"), [
    ("echo", False), ("suffix", ""), ("suffix", None), ("best_of", 1), ("logprobs", None),
    ("logit_bias", {}),
])
def test_completion_neutral_values_accepted(key: str, value: Any) -> None:
    assert parse_completion(completion(**{key: value})).prompt == "Once upon a time"


def test_completion_parses_everything() -> None:
    req = parse_completion(completion(max_tokens=16, stop=["\n\n"], stream=True, temperature=1.5,
                                      top_p=0.5, seed=7, user="u"))
    assert req.max_tokens == 16
    assert req.stop == ("\n\n",)
    assert req.stream is True
    assert req.sampling.temperature == 1.5
    assert req.sampling.top_p == 0.5
    assert req.sampling.seed == 7


def test_completion_model_required() -> None:
    assert_invalid(parse_completion, without(completion(), "model"), "model")


def test_error_message_never_echoes_prompt_text() -> None:
    secret = "CANARY-prompt-text-1234"
    err = invalid(parse_chat, chat(messages=[{"role": "user", "content": secret}], temperature=9))
    assert secret not in err.message
    err = invalid(parse_completion, completion(prompt=secret, top_p=0))
    assert secret not in err.message


# --- tools -------------------------------------------------------------------------------

WEATHER = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time"}},
]


def test_tools_parsed_into_tools_with_parameters_in_their_order() -> None:
    req = parse_chat(chat(tools=TOOLS))
    assert req.tools == (
        Tool("get_weather", "Weather for a city", json.dumps(WEATHER)),
        Tool("get_time", "", '{"type": "object", "properties": {}}'),
    )
    assert req.tool_choice == ToolChoice("auto")
    # Key order in the request is kept (the grammar follows it): a reordered schema is other text.
    reordered = {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}
    other = parse_chat(chat(tools=[{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": reordered}}]))
    assert other.tools[0].parameters == json.dumps(reordered) != req.tools[0].parameters
    assert json.loads(other.tools[0].parameters) == json.loads(req.tools[0].parameters)


@pytest.mark.parametrize(("choice", "expected"), [
    ("none", ToolChoice("none")),
    ("auto", ToolChoice("auto")),
    ("required", ToolChoice("required")),
    ({"type": "function", "function": {"name": "get_time"}}, ToolChoice("required", "get_time")),
])
def test_tool_choice_with_tools(choice: Any, expected: ToolChoice) -> None:
    req = parse_chat(chat(tools=TOOLS, tool_choice=choice))
    assert req.tool_choice == expected
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]


def test_named_tool_choice_must_name_a_tool_in_tools() -> None:
    choice = {"type": "function", "function": {"name": "get_stock_price"}}
    err = assert_invalid(parse_chat, chat(tools=TOOLS, tool_choice=choice), "tool_choice")
    assert "not in tools" in err.message


@pytest.mark.parametrize("choice", [
    "any", "Auto", "", 1, True, ["auto"], {"type": "function"}, {"type": "function", "name": "get_time"},
    {"type": "function", "function": {"name": 5}}, {"type": "function", "function": "get_time"},
    {"type": "tool", "function": {"name": "get_time"}}, {"type": "auto"},
])
def test_malformed_tool_choice(choice: Any) -> None:
    assert_invalid(parse_chat, chat(tools=TOOLS, tool_choice=choice), "tool_choice")


@pytest.mark.parametrize(("tools", "param"), [
    ({"type": "function", "function": {"name": "f"}}, "tools"),
    ("f", "tools"),
    (["f"], "tools[0].type"),
    ([{"function": {"name": "f"}}], "tools[0].type"),
    ([{"type": "web_search", "function": {"name": "f"}}], "tools[0].type"),
    ([{"type": "function"}], "tools[0].function"),
    ([{"type": "function", "function": "f"}], "tools[0].function"),
    ([{"type": "function", "name": "f", "parameters": {}}], "tools[0].function"),
    ([{"type": "function", "function": {}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "get weather"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "a.b"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": 5}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "description": 5}}], "tools[0].function.description"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "tools[0].function"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "tools[0].function"),
    ([{"type": "function", "function": {"name": "f\n"}}], "tools[0].function.name"),
    ([TOOLS[0], {"type": "function", "function": {"name": "get_weather"}}], "tools"),
])
def test_bad_tools(tools: Any, param: str) -> None:
    assert_invalid(parse_chat, chat(tools=tools), param)


def test_tool_names_allowed_characters() -> None:
    names = ["a", "A-b_9", "x" * 64]
    tools = [{"type": "function", "function": {"name": n}} for n in names]
    assert [t.name for t in parse_chat(chat(tools=tools)).tools] == names


def test_at_most_128_tools() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    assert len(parse_chat(chat(tools=tools[:128])).tools) == 128
    err = assert_invalid(parse_chat, chat(tools=tools), "tools")
    assert "128" in err.message


def test_tool_calls_and_results_written_into_the_prompt() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris, and the time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "get_weather", "arguments": "Paris"}},
        ]},
    ]
    req = parse_chat(chat(messages=messages, tools=TOOLS))
    assert req.messages == (
        Message("user", "Weather in Paris, and the time?"),
        Message("assistant", 'Let me check.\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                             '{"name": "get_time", "arguments": {}}'),
        Message("tool", "Result of get_weather: sunny"),
        Message("tool", "Result of get_time: 12:00"),
        # arguments that are not JSON are kept as a string rather than refused
        Message("assistant", '{"name": "get_weather", "arguments": "Paris"}'),
    )
    assert json.loads(req.messages[1].content.split("\n")[1]) == {"name": "get_weather",
                                                                  "arguments": {"city": "Paris"}}


def test_tool_call_without_arguments_or_id() -> None:
    item = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_time"}}]}
    result = {"role": "tool", "tool_call_id": "call_x", "content": "noon"}
    req = parse_chat(chat(messages=[item, result]))
    assert req.messages == (Message("assistant", '{"name": "get_time", "arguments": ""}'),
                            Message("tool", "Result of call_x: noon"))


@pytest.mark.parametrize(("content", "said"), [
    ("Let me check.", "Let me check."),
    ([{"type": "text", "text": "Let me check."}], "Let me check."),
    ([{"type": "text", "text": "Let me "}, {"type": "text", "text": "check."}], "Let me check."),
    (None, ""), ("", ""), ([], ""),
])
def test_tool_calls_keep_text_parts_of_the_same_turn(content: Any, said: str) -> None:
    item = {"role": "assistant", "content": content,
            "tool_calls": [{"id": "c", "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"}}]}
    req = parse_chat(chat(messages=[item]))
    call = '{"name": "get_time", "arguments": {}}'
    assert req.messages == (Message("assistant", f"{said}\n{call}" if said else call),)


@pytest.mark.parametrize(("content", "param", "code"), [
    (5, "messages[0].content", "invalid_request_error"),
    ({"type": "text", "text": "x"}, "messages[0].content", "invalid_request_error"),
    (["x"], "messages[0].content[0]", "invalid_request_error"),
    ([{"type": "text"}], "messages[0].content[0].text", "invalid_request_error"),
    ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[0].content[0].type",
     "unsupported_parameter"),
])
def test_tool_calls_content_follows_the_content_rules(content: Any, param: str, code: str) -> None:
    item = {"role": "assistant", "content": content,
            "tool_calls": [{"id": "c", "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"}}]}
    assert_invalid(parse_chat, chat(messages=[item]), param, code)


@pytest.mark.parametrize(("choice", "forced"), [
    ("none", False), ("auto", False), ("required", True),
    ({"type": "function", "function": {"name": "get_time"}}, True),
])
def test_grammar_only_for_a_forced_call(choice: Any, forced: bool) -> None:
    grammar = grammar_for(parse_chat(chat(tools=TOOLS, tool_choice=choice)))
    if not forced:
        assert grammar is None
        return
    assert isinstance(grammar, str) and "root ::=" in grammar
    assert '\\"get_time\\"' in grammar
    # a named tool is the only one the grammar allows
    assert ('\\"get_weather\\"' in grammar) == (choice == "required")


def test_forced_call_grammar_wins_over_response_format() -> None:
    req = parse_chat(chat(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}))
    forced = grammar_for(req)
    assert forced is not None and '\\"get_weather\\"' in forced
    auto = grammar_for(parse_chat(chat(tools=TOOLS, response_format={"type": "json_object"})))
    assert auto is not None and "get_weather" not in auto


UNENFORCEABLE = {"not": {"type": "string"}}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "odd"}}])
def test_parse_request_refuses_a_forced_call_it_cannot_enforce(choice: Any) -> None:
    tools = [*TOOLS, {"type": "function", "function": {"name": "odd", "parameters": UNENFORCEABLE}}]
    err = assert_invalid(lambda b: parse_request("/v1/chat/completions", b),
                         chat(tools=tools, tool_choice=choice), "tools", "unsupported_parameter")
    assert "cannot" in err.message and "enforce" in err.message


@pytest.mark.parametrize("choice", ["auto", "none", {"type": "function", "function": {"name": "get_time"}}])
def test_parse_request_accepts_an_unenforceable_schema_it_need_not_enforce(choice: Any) -> None:
    tools = [*TOOLS, {"type": "function", "function": {"name": "odd", "parameters": UNENFORCEABLE}}]
    req = parse_request("/v1/chat/completions", chat(tools=tools, tool_choice=choice))
    assert [t.name for t in req.tools] == ["get_weather", "get_time", "odd"]


def test_forced_call_grammar_writes_the_name_first() -> None:
    grammar = grammar_for(parse_chat(chat(tools=TOOLS[:1], tool_choice="required")))
    assert grammar is not None
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.index("name-kv") < root.index("arguments-kv")


@pytest.mark.parametrize("tools", [
    [{"type": "function", "function": {"name": "f", "description": CANARY_TOOL}}, "x"],
    [{"type": "function", "function": {"name": f"{CANARY_TOOL} with spaces"}}],
    [{"type": "function", "function": {"name": "f", "description": CANARY_TOOL,
                                       "parameters": [CANARY_TOOL]}}],
])
def test_tool_errors_never_echo_definitions(tools: list[Any]) -> None:
    err = invalid(parse_chat, chat(tools=tools))
    assert CANARY_TOOL not in err.message and CANARY_TOOL not in (err.param or "")


def test_tool_call_errors_never_echo_arguments_or_results() -> None:
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": CANARY_TOOL}}}]}
    err = invalid(parse_chat, chat(messages=[call]))
    assert CANARY_TOOL not in err.message
    result = {"role": "tool", "content": CANARY_TOOL}
    err = invalid(parse_chat, chat(messages=[result]))
    assert CANARY_TOOL not in err.message
