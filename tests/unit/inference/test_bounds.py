"""Malformed bodies are 400s, never exceptions: nesting depth, lone surrogates, numbers out of
range or too large for float() and C ints, tool-call arguments nested past the limit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference import bounded_json
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.request import MAX_TOP_K, parse_json_body
from darkbloom.inference.tools import read_call, written_call

USER = [{"role": "user", "content": "hi"}]
ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": USER},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/messages": {"model": "m", "max_tokens": 5, "messages": USER},
    "/v1/responses": {"model": "m", "input": "hi"},
}


def refused(endpoint: str, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, {**ROUTES[endpoint], **fields})
    assert info.value.status_code == 400
    return info.value


# --- nesting depth and bounded loads ------------------------------------------------------


@pytest.mark.parametrize(("text", "depth"), [
    ("1", 0), ("{}", 1), ("[[1, {\"a\": [2]}]]", 4), ('"[[[{{"', 0), ('["]\\"]"]', 1),
    ('{"a": "\\\\"}', 1),
])
def test_nesting_depth_ignores_brackets_in_strings(text: str, depth: int) -> None:
    assert bounded_json.nesting_depth(text) == depth


def test_body_nested_past_the_limit_is_a_400() -> None:
    limit = bounded_json.MAX_DEPTH
    ok = {"model": "m", "x": json.loads("[" * (limit - 1) + "]" * (limit - 1))}
    assert parse_json_body(json.dumps(ok).encode())["model"] == "m"
    for depth in (limit, 5000, 90_000):
        raw = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(InvalidRequest) as info:
            parse_json_body(raw)
        assert info.value.code == "invalid_json" and "nested" in info.value.message


def test_unclosed_brackets_are_invalid_json() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_body(b"[" * 100_000)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize("raw", [
    b'{"\\ud800": 1}', b'{"model": "m", "messages": [{"role": "user", "content": "a\\udc00b"}]}',
    b'{"model": "\\uDBFF"}', b'{"a": ["\\ud83d"]}',
])
def test_lone_surrogates_are_a_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_body(raw)
    assert "surrogate" in info.value.message


def test_surrogate_pairs_and_raw_utf8_are_fine() -> None:
    assert parse_json_body(b'{"a": "\\ud83d\\ude00 \xf0\x9f\x98\x80"}') == {"a": "\U0001f600 \U0001f600"}


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b'{"a": "\xff"}', '{"a": 1}'.encode("utf-16")])
def test_bodies_that_are_not_utf8_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_body(raw)
    assert info.value.code == "invalid_json"


# --- tool-call arguments ------------------------------------------------------------------


def test_arguments_nested_too_deep_are_a_400_naming_the_field() -> None:
    for arguments in ("[" * 100_000, "[" * 100 + "]" * 100):
        with pytest.raises(InvalidRequest) as info:
            written_call("f", arguments, "messages[0].tool_calls[0].function.arguments")
        assert info.value.param == "messages[0].tool_calls[0].function.arguments"


def test_deep_arguments_through_every_dialect() -> None:
    deep = "[" * 100_000
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}]}
    err = refused("/v1/chat/completions", messages=[*USER, call])
    assert err.param == "messages[1].tool_calls[0].function.arguments"
    item = {"type": "function_call", "call_id": "c", "name": "f", "arguments": deep}
    assert refused("/v1/responses", input=[item]).param == "input[0].arguments"


def test_a_deep_answer_is_not_a_call() -> None:
    assert read_call('{"name": "f", "arguments": ' + "[" * 100_000, ()) is None
    assert read_call('{"name": "f", "arguments": ' + "[" * 80 + "]" * 80 + "}", ()) is None


# --- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ROUTES))
@pytest.mark.parametrize("key", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**20])
def test_huge_integers_are_range_errors_not_overflows(endpoint: str, key: str, value: int) -> None:
    err = refused(endpoint, **{key: value})
    assert err.param == key and len(err.message) < 200


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("key", ["min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"])
def test_every_float_knob_takes_huge_integers(endpoint: str, key: str) -> None:
    assert refused(endpoint, **{key: 10**400}).param == key


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("top_k", [10**30, MAX_TOP_K + 1, -1])
def test_top_k_fits_a_c_int(endpoint: str, top_k: int) -> None:
    assert refused(endpoint, top_k=top_k).param == "top_k"


def test_top_k_at_the_c_int_limit_is_accepted() -> None:
    request = parse_request("/v1/messages", {**ROUTES["/v1/messages"], "top_k": MAX_TOP_K})
    assert request.sampling.top_k == MAX_TOP_K


@pytest.mark.parametrize(("key", "value"), [
    ("seed", 2**64), ("seed", -(2**63) - 1), ("n", 10**400), ("max_tokens", 10**400),
    ("top_logprobs", 10**400), ("max_completion_tokens", 10**30),
])
def test_other_integers_are_bounded(key: str, value: int) -> None:
    fields = {"logprobs": True} if key == "top_logprobs" else {}
    assert refused("/v1/chat/completions", **fields, **{key: value}).param == key


@pytest.mark.parametrize("raw", [
    b"[]" * 2_000_000, b"[" * 4_000_000, b'["\\\\"' + b"," * 8 + b"{}" * 200_000])
def test_bracket_floods_are_refused_before_parsing(raw: bytes) -> None:
    """json.loads holds the GIL per container even off the event loop: count first."""
    with pytest.raises(InvalidRequest, match="'\\[' and '\\{' characters"):
        parse_json_body(raw)


@pytest.mark.parametrize("text", ['{"a":"[[["}', '{"a":"\\"[[\\\\"}[', '"\\\\"[', '["\\\\\\"["]'])
def test_containers_outside_strings_are_counted_exactly(text: str) -> None:
    expected = text.count("[") + text.count("{") - _brackets_in_strings(text)
    assert bounded_json.containers(text) == expected


def _brackets_in_strings(text: str) -> int:
    """Slow reference: walk the text as a JSON scanner would."""
    inside, escaped, count = False, False, 0
    for c in text:
        if inside:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                inside = False
            elif c in "[{":
                count += 1
        elif c == '"':
            inside = True
    return count


def test_brackets_inside_strings_do_not_count() -> None:
    raw = json.dumps({"model": "m", "a": "{" * 200_000}).encode()
    assert parse_json_body(raw)["a"] == "{" * 200_000


def test_many_containers_under_the_cap_still_parse() -> None:
    raw = json.dumps({"model": "m", "x": [[] for _ in range(bounded_json.MAX_CONTAINERS - 10)]})
    assert len(parse_json_body(raw.encode())["x"]) == bounded_json.MAX_CONTAINERS - 10
