"""JSON Schema checks before grammar conversion (schema.py, grammar.gbnf): every keyword the
converter reads is type-checked, every bound capped, the grammar bounded, and the schemas that
crashed, exhausted memory or produced a wrong grammar are 400s naming the parameter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llama_cpp import llama_grammar

from darkbloom.errors import InvalidRequest
from darkbloom.inference.dialects import parse_request
from darkbloom.inference.grammar import ResponseFormat, gbnf
from darkbloom.inference.schema import MAX_GRAMMAR_BYTES, MAX_REPEAT, checked_schema


def refused(schema: Any, param: str = "response_format") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        gbnf(ResponseFormat("json_schema", json.dumps(schema)), param)
    err = info.value
    assert (err.status_code, err.param) == (400, param), err.message
    assert err.code in ("unsupported_parameter", "invalid_request_error")
    return err


def grammar(schema: Any) -> str:
    return gbnf(ResponseFormat("json_schema", json.dumps(schema)))


def string(**bounds: Any) -> dict[str, Any]:
    return {"type": "string", **bounds}


def array(**bounds: Any) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "integer"}, **bounds}


@pytest.mark.parametrize("schema", [
    string(maxLength=50_000_000), string(maxLength=10**9), string(minLength=10**9),
    string(maxLength=MAX_REPEAT + 1), array(maxItems=10**9), array(minItems=MAX_REPEAT + 1),
    string(pattern="^a{0,50000000}$"), string(pattern="^(ab){1001}$"), string(pattern="^a{5,}b{2000,}$"),
])
def test_bounds_above_the_cap_are_refused_before_conversion(
        schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(_: str) -> str:
        raise AssertionError("converted: a 10**9 bound is an OOM")

    monkeypatch.setattr(llama_grammar, "json_schema_to_gbnf", convert)
    err = refused(schema)
    assert err.code == "unsupported_parameter" and str(MAX_REPEAT) in err.message


@pytest.mark.parametrize("schema", [
    string(maxLength=MAX_REPEAT), string(minLength=MAX_REPEAT), array(maxItems=MAX_REPEAT),
    array(minItems=3, maxItems=MAX_REPEAT), string(pattern="^[0-9]{3}-[a-z]{1,1000}$"),
])
def test_bounds_at_the_cap_convert_and_llama_cpp_accepts_them(schema: dict[str, Any]) -> None:
    assert "root ::=" in grammar(schema)


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": ["a"]}, {"type": "string", "format": {"x": 1}},
    {"type": "object", "properties": [1]}, {"type": "object", "properties": {"a": 5}},
    {"type": "object", "properties": {"a": True}}, {"type": "string", "pattern": 5},
    {"type": "string", "pattern": "^{3}$"}, {"type": "string", "pattern": "^a{x}$"},
    {"type": "string", "pattern": "no anchors"}, {"type": "array", "items": 5},
    {"type": "array", "items": [5]}, {"type": "array", "prefixItems": "x"},
    {"type": ["string", ["x"]]}, {"type": []}, {"type": "strung"}, {"type": 5},
    {"type": "object", "required": "a"}, {"type": "object", "required": [["a"]]},
    {"type": "object", "additionalProperties": 5}, {"anyOf": []}, {"anyOf": [1]}, {"oneOf": {}},
    {"allOf": [1]}, {"enum": []}, {"enum": "a"}, string(minLength=True), string(maxLength=2.5),
    string(maxLength=-1), string(minLength=5, maxLength=2), array(minItems=5, maxItems=2),
    string(maxLength=None), string(minLength=None), array(minItems=None), array(maxItems=None),
    {"$ref": 5}, {"$ref": "http://example.com/s.json"}, {"$ref": "#/nowhere"}, {"$ref": "#"},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": 5}},
    {"type": "object", "properties": {"$ref": {"type": "string"}}},
])
def test_every_keyword_is_type_checked(schema: dict[str, Any]) -> None:
    refused(schema)


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^\\d{3}$"}, {"type": "string", "pattern": "^\\w+$"},
    {"type": "string", "pattern": "^a\\.b$"}, {"type": "string", "pattern": "^[\\s]$"},
])
def test_pattern_escapes_llama_cpp_cannot_parse_are_refused(schema: dict[str, Any]) -> None:
    """These used to reach the provider, whose sampler segfaulted on the refused grammar."""
    assert "cannot" in refused(schema).message


@pytest.mark.parametrize("literal", ['a"b', "a\\b", "a\nb", "\U0001f600"])
def test_strings_the_grammar_cannot_spell_are_refused(literal: str) -> None:
    refused({"type": "object", "properties": {literal: {"type": "integer"}}})
    refused({"enum": ["ok", literal]})
    refused({"const": {"k": [literal]}})


def test_strings_it_can_spell_are_written_as_themselves() -> None:
    assert "\\u00fc" in grammar({"enum": ["grün"]})


@pytest.mark.parametrize("schema", [
    # optional properties are paired: quadratic in the converter
    {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}},
    # the same target expanded once per allOf use
    {"type": "object", "properties": {f"q{j}": {"allOf": [{"$ref": "#/$defs/d"}]} for j in range(200)},
     "$defs": {"d": {"type": "object", "properties": {f"p{i}": string(maxLength=100) for i in range(50)}}}},
    # a long rule name repeated by every bound
    {"type": "object", "properties": {"x" * 30_000: array(maxItems=MAX_REPEAT)}},
    {"enum": list(range(2000))},
])
def test_schemas_whose_grammar_would_be_too_large_are_refused(schema: dict[str, Any]) -> None:
    assert refused(schema).code == "unsupported_parameter"


def test_depth_and_node_count_are_capped() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    assert "deep" in refused(deep).message
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(10_001)},
            "required": [f"p{i}" for i in range(10_001)]}
    refused(wide)


def test_refs_sharing_a_last_segment_keep_their_own_rules() -> None:
    """The converter named ref rules after the last path segment: ``b`` came out a string."""
    schema = {"type": "object", "properties": {"a": string(maxLength=3), "b": {"$ref": "#/$defs/a"}},
              "$defs": {"a": {"type": "integer"}}, "required": ["a", "b"]}
    rules = dict(line.split(" ::= ", 1) for line in grammar(schema).splitlines())
    assert rules["b"] == "integer"  # was "a", the 3-character string rule


def test_refs_with_escaped_names_are_not_expanded_per_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names the converter escapes (``d_1``) missed its memo: 2**depth expansions."""
    n = 12
    defs = {f"d_{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d_{i + 1}"},
                                                        "y": {"$ref": f"#/$defs/d_{i + 1}"}},
                       "required": ["x", "y"]} for i in range(n)}
    defs[f"d_{n}"] = {"type": "integer"}
    visits = 0
    visit = llama_grammar.SchemaConverter.visit

    def counting(self: Any, schema: Any, name: str) -> Any:
        nonlocal visits
        visits += 1
        return visit(self, schema, name)

    monkeypatch.setattr(llama_grammar.SchemaConverter, "visit", counting)
    assert "root ::=" in grammar({"type": "object", "properties": {"r": {"$ref": "#/$defs/d_0"}},
                                  "$defs": defs, "required": ["r"]})
    assert visits < 10 * n  # not 2**n


def test_recursive_refs_still_convert() -> None:
    node = {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/n"}},
            "required": ["v"]}
    assert "root ::=" in grammar({"type": "object", "properties": {"head": {"$ref": "#/$defs/n"}},
                                  "$defs": {"n": node}})
    refused({"type": "object", "properties": {"a": {"allOf": [{"$ref": "#/properties/a"}]}}})


def test_required_names_must_be_properties() -> None:
    refused({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})
    refused({"type": "object", "required": ["b"]})


def test_checked_schema_is_the_schema_when_it_has_no_refs() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    assert checked_schema(schema, "p") == json.dumps(schema)


def test_grammar_is_bounded() -> None:
    assert len(grammar(array(maxItems=MAX_REPEAT))) <= MAX_GRAMMAR_BYTES


@pytest.mark.parametrize(("endpoint", "body", "param"), [
    ("/v1/chat/completions",
     {"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema",
                          "json_schema": {"name": "n", "schema": string(maxLength=10**9)}}},
     "response_format.json_schema.schema"),
    ("/v1/chat/completions",
     {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {
          "type": "object", "properties": {"s": string(maxLength=10**9)}}}}]}, "tools"),
    ("/v1/messages",
     {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tool_choice": {"type": "any"},
      "tools": [{"name": "f", "input_schema": {"type": "object",
                                               "properties": {"s": string(maxLength=10**9)}}}]},
     "tools"),
    ("/v1/responses",
     {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n",
                                                      "schema": string(maxLength=10**9)}}},
     "text.format.schema"),
])
def test_every_route_refuses_a_huge_bound(endpoint: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, body)
    assert (info.value.param, info.value.code) == (param, "unsupported_parameter")


def test_one_schema_is_converted_once_whatever_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider parses a request (converting its schema) and its engine asks again."""
    calls = 0
    convert = llama_grammar.json_schema_to_gbnf

    def counting(schema: Any) -> Any:
        nonlocal calls
        calls += 1
        return convert(schema)

    monkeypatch.setattr(llama_grammar, "json_schema_to_gbnf", counting)
    fmt = ResponseFormat("json_schema", json.dumps({"type": "object", "properties": {
        "once": {"type": "string", "maxLength": 7}}, "required": ["once"]}))
    assert gbnf(fmt, "response_format.json_schema.schema") == gbnf(fmt)
    assert calls == 1
    refusing = ResponseFormat("json_schema", json.dumps({"type": "string", "pattern": "^\\w+$"}))
    for param in ("tools", "response_format"):
        with pytest.raises(InvalidRequest) as info:
            gbnf(refusing, param)
        assert info.value.param == param
