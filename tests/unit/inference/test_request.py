"""Validation of OpenAI-dialect request bodies (api.md §3.1, §3.4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.fields import MAX_OUTPUT_TOKENS
from darkbloom.inference.request import (
    DEFAULT_MAX_TOKENS,
    MAX_MESSAGES,
    Message,
    Sampling,
    parse_chat,
    parse_completion,
    parse_json_body,
)

Parser = Callable[[dict[str, Any]], Any]


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
    messages = [{"role": r, "content": r} for r in ("system", "developer", "user", "assistant", "tool")]
    req = parse_chat(chat(messages=messages))
    assert [m.role for m in req.messages] == ["system", "system", "user", "assistant", "tool"]
    assert [m.content for m in req.messages] == ["system", "developer", "user", "assistant", "tool"]


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


def test_chat_message_with_tool_calls_unsupported() -> None:
    item = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert_invalid(parse_chat, chat(messages=[item]), "messages[0].tool_calls", "unsupported_parameter")


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


def test_tools_unsupported() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert_invalid(parse_chat, chat(tools=tools), "tools", "unsupported_parameter")


def test_empty_tools_accepted() -> None:
    assert parse_chat(chat(tools=[])).model == "m"


@pytest.mark.parametrize("choice", ["none", "auto"])
def test_tool_choice_none_or_auto_accepted(choice: str) -> None:
    assert parse_chat(chat(tool_choice=choice)).model == "m"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_tool_choice_forcing_a_tool_unsupported(choice: Any) -> None:
    assert_invalid(parse_chat, chat(tool_choice=choice), "tool_choice", "unsupported_parameter")


def test_chat_logprobs_unsupported() -> None:
    assert_invalid(parse_chat, chat(logprobs=True), "logprobs", "unsupported_parameter")
    assert_invalid(parse_chat, chat(top_logprobs=2), "top_logprobs", "unsupported_parameter")
    assert parse_chat(chat(logprobs=False)).model == "m"


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
    ("echo", True), ("suffix", "the end"), ("best_of", 2), ("best_of", 0), ("logprobs", 0),
    ("logprobs", 5), ("logit_bias", {"50256": -100}),
])
def test_completion_unsupported_parameters(key: str, value: Any) -> None:
    assert_invalid(parse_completion, completion(**{key: value}), key, "unsupported_parameter")


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
