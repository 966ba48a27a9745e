"""Function calling shared by every dialect: tool definitions, the choice, the prompt and the call."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.tools import (
    AUTO,
    MAX_TOOLS,
    NONE,
    Tool,
    ToolCall,
    ToolChoice,
    allowed,
    call_schema,
    check_unique,
    choose,
    define,
    new_call_id,
    read_call,
    system_prompt,
    written_call,
)

WEATHER: dict[str, Any] = {"type": "object", "required": ["city"],
                           "properties": {"unit": {"enum": ["c", "f"]}, "city": {"type": "string"}}}
TIME: dict[str, Any] = {"type": "object", "properties": {"tz": {"type": "string"}}}


def tool(name: str, parameters: dict[str, Any] | None = None, description: str = "") -> Tool:
    return define(name, description, parameters, "tools[0]")


WEATHER_TOOL = tool("get_weather", WEATHER, "Weather for a city")
TIME_TOOL = tool("get_time", TIME, "Time in a timezone")
BOTH = (WEATHER_TOOL, TIME_TOOL)


def invalid(call: Any, *args: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call(*args)
    assert info.value.status_code == 400
    assert info.value.code == "invalid_request_error"
    return info.value


# --- define ------------------------------------------------------------------------------


def test_define_keeps_name_and_description_and_parameters_in_their_order() -> None:
    t = define("get_weather", "Weather for a city", WEATHER, "tools[0].function")
    assert t == Tool("get_weather", "Weather for a city", json.dumps(WEATHER))
    assert json.loads(t.parameters) == WEATHER
    assert list(json.loads(t.parameters)) == ["type", "required", "properties"]
    assert list(json.loads(t.parameters)["properties"]) == ["unit", "city"]
    reordered = {"properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                 "type": "object", "required": ["city"]}
    other = define("get_weather", "Weather for a city", reordered, "w")
    assert other.parameters == json.dumps(reordered) != t.parameters  # key order is kept, not sorted
    assert json.loads(other.parameters) == json.loads(t.parameters)


@pytest.mark.parametrize("name", ["f", "F", "0", "get_weather", "get-weather", "A_b-9", "x" * 64])
def test_define_accepts_names_matching_the_rule(name: str) -> None:
    assert define(name, None, None, "tools[0]").name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "get weather", "get.weather", "get/weather", "wetter-für",
                                  "\nf", "f\nf", "f()", None, 5, ["f"], {"name": "f"}])
def test_define_refuses_names_breaking_the_rule(name: Any) -> None:
    err = invalid(define, name, None, None, "tools[3].function")
    assert err.param == "tools[3].function.name"
    assert "^[a-zA-Z0-9_-]{1,64}$" in err.message


@pytest.mark.parametrize("name", ["f\n", "x" * 64 + "\n"])
def test_define_refuses_a_name_with_a_trailing_newline(name: str) -> None:
    assert invalid(define, name, None, None, "tools[0].function").param == "tools[0].function.name"


def test_define_default_description_and_parameters() -> None:
    assert define("f", None, None, "w") == Tool("f", "", '{"type": "object", "properties": {}}')
    assert json.loads(define("f", "", None, "w").parameters) == {"type": "object", "properties": {}}
    assert define("f", None, {}, "w").parameters == "{}"  # an explicit schema is kept as given


@pytest.mark.parametrize("description", [5, ["d"], {"d": 1}, True])
def test_define_refuses_a_non_string_description(description: Any) -> None:
    assert invalid(define, "f", description, None, "tools.2").param == "tools.2.description"


@pytest.mark.parametrize("parameters", ["{}", '{"type": "object"}', [], [{"type": "object"}], 5, True])
def test_define_refuses_non_object_parameters(parameters: Any) -> None:
    err = invalid(define, "f", None, parameters, "tools.1")
    assert err.param == "tools.1"
    assert err.message == "tools.1 parameters must be a JSON Schema of type object"


@pytest.mark.parametrize("parameters", [
    {"type": "string"}, {"type": "array", "items": {}}, {"type": "null"}, {"type": None},
    {"type": ["object"]}, {"type": "Object"}, {"type": "object ", "properties": {}},
])
def test_define_refuses_parameters_whose_type_is_not_object(parameters: dict[str, Any]) -> None:
    err = invalid(define, "f", None, parameters, "tools[2].function")
    assert err.param == "tools[2].function"
    assert err.message == "tools[2].function parameters must be a JSON Schema of type object"


@pytest.mark.parametrize("parameters", [{}, {"properties": {"a": {"type": "string"}}}, {"type": "object"}])
def test_define_takes_a_schema_without_a_type_as_an_object(parameters: dict[str, Any]) -> None:
    assert define("f", None, parameters, "w").parameters == json.dumps(parameters)


# --- check_unique ------------------------------------------------------------------------


def test_check_unique_returns_the_tools_as_a_tuple() -> None:
    assert check_unique([WEATHER_TOOL, TIME_TOOL], "tools") == BOTH
    assert check_unique([], "tools") == ()


def test_check_unique_refuses_duplicate_names() -> None:
    other = tool("get_weather", TIME, "another")
    err = invalid(check_unique, [WEATHER_TOOL, TIME_TOOL, other], "tools")
    assert err.param == "tools"
    assert "duplicate" in err.message


def test_check_unique_caps_the_number_of_tools() -> None:
    assert MAX_TOOLS == 128
    many = [tool(f"t{i}") for i in range(MAX_TOOLS + 1)]
    assert len(check_unique(many[:MAX_TOOLS], "tools")) == MAX_TOOLS
    err = invalid(check_unique, many, "tools")
    assert (err.param, "128" in err.message) == ("tools", True)


# --- choose and allowed ------------------------------------------------------------------


def test_choose_none_needs_no_tools() -> None:
    assert choose("none", None, (), "tool_choice") is NONE
    assert choose("none", None, BOTH, "tool_choice") == ToolChoice("none")


def test_choose_auto_and_required() -> None:
    assert choose("auto", None, BOTH, "tool_choice") == AUTO == ToolChoice("auto")
    assert choose("required", None, BOTH, "tool_choice") == ToolChoice("required")


def test_choose_a_named_tool() -> None:
    assert choose("required", "get_time", BOTH, "tool_choice") == ToolChoice("required", "get_time")


@pytest.mark.parametrize(("mode", "name"), [("auto", None), ("required", None), ("required", "get_time")])
def test_choose_anything_but_none_requires_tools(mode: str, name: str | None) -> None:
    err = invalid(choose, mode, name, (), "tool_choice")
    assert err.param == "tool_choice" and "requires tools" in err.message


def test_choose_a_tool_that_is_not_offered() -> None:
    err = invalid(choose, "required", "get_stock", BOTH, "tool_choice")
    assert err.param == "tool_choice" and "not in tools" in err.message
    assert "get_stock" not in err.message  # the name is not echoed back either


@pytest.mark.parametrize(("choice", "expected"), [
    (NONE, ()),
    (AUTO, BOTH),
    (ToolChoice("required"), BOTH),
    (ToolChoice("required", "get_time"), (TIME_TOOL,)),
    (ToolChoice("required", "get_weather"), (WEATHER_TOOL,)),
])
def test_allowed(choice: ToolChoice, expected: tuple[Tool, ...]) -> None:
    assert allowed(BOTH, choice) == expected


def test_allowed_without_tools() -> None:
    assert allowed((), AUTO) == ()
    assert allowed((), NONE) == ()


# --- system_prompt -----------------------------------------------------------------------


def test_system_prompt_lists_every_tool() -> None:
    many = (*BOTH, tool("lookup", None, "Look a word up"))
    prompt = system_prompt(many)
    for t in many:
        assert json.dumps(t.name) in prompt
        assert t.description in prompt
    listing = json.loads(prompt.split("\n")[1])
    assert listing == [{"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)}
                       for t in many]


def test_system_prompt_tells_the_shape_of_a_call() -> None:
    prompt = system_prompt((TIME_TOOL,))
    assert '"name"' in prompt and '"arguments"' in prompt
    assert "get_weather" not in prompt


# --- call_schema -------------------------------------------------------------------------


def test_call_schema_for_one_tool_is_an_object_with_a_constant_name() -> None:
    text = call_schema((WEATHER_TOOL,))
    schema = json.loads(text)
    assert schema == {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    assert text == json.dumps(schema)  # key order as built, not sorted
    assert list(schema) == ["type", "properties", "required", "additionalProperties"]
    assert list(schema["properties"]) == ["name", "arguments"]  # the name is generated first
    assert text.index('"name"') < text.index('"arguments"')
    assert schema["properties"]["arguments"] == WEATHER
    assert list(schema["properties"]["arguments"]["properties"]) == ["unit", "city"]  # as the tool gave it


def test_call_schema_for_several_tools_is_any_of() -> None:
    text = call_schema(BOTH)
    schema = json.loads(text)
    assert text == json.dumps(schema)
    assert list(schema) == ["anyOf"]
    assert all(list(option["properties"]) == ["name", "arguments"] for option in schema["anyOf"])
    assert [option["properties"]["name"] for option in schema["anyOf"]] == [{"const": "get_weather"},
                                                                          {"const": "get_time"}]
    assert [option["properties"]["arguments"] for option in schema["anyOf"]] == [WEATHER, TIME]
    assert all(option["additionalProperties"] is False for option in schema["anyOf"])


@pytest.mark.parametrize(("instance", "ok"), [
    ({"name": "get_weather", "arguments": {"city": "Paris"}}, True),
    ({"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, True),
    ({"name": "get_time", "arguments": {}}, True),
    ({"name": "get_weather", "arguments": {}}, False),  # city is required
    ({"name": "get_weather", "arguments": {"city": "Paris", "unit": "k"}}, False),
    ({"name": "get_stock", "arguments": {}}, False),
    ({"name": "get_time"}, False),
    ({"arguments": {}}, False),
    ({"name": "get_time", "arguments": {}, "id": "x"}, False),
])
def test_call_schema_accepts_exactly_the_calls_of_the_tools(instance: dict[str, Any], ok: bool) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(call_schema(BOTH)))
    assert validator.is_valid(instance) is ok


def test_call_schema_of_a_named_choice_allows_only_that_tool() -> None:
    validator = jsonschema.Draft202012Validator(
        json.loads(call_schema(allowed(BOTH, ToolChoice("required", "get_time")))))
    assert validator.is_valid({"name": "get_time", "arguments": {"tz": "UTC"}})
    assert not validator.is_valid({"name": "get_weather", "arguments": {"city": "Paris"}})


# --- written_call ------------------------------------------------------------------------


def test_written_call_with_json_arguments() -> None:
    text = written_call("get_weather", '{"city": "Paris"}')
    assert text == '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert json.loads(text) == {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize(("arguments", "expected"), [
    ("Paris", "Paris"), ("", ""), ("{city: Paris}", "{city: Paris}"), ('{"a": ', '{"a": '),
])
def test_written_call_with_arguments_that_are_not_json(arguments: str, expected: str) -> None:
    assert json.loads(written_call("f", arguments)) == {"name": "f", "arguments": expected}


def test_written_call_keeps_json_that_is_not_an_object() -> None:
    assert json.loads(written_call("f", "[1, 2]")) == {"name": "f", "arguments": [1, 2]}
    assert json.loads(written_call("f", "3")) == {"name": "f", "arguments": 3}


def test_written_call_is_read_back_as_the_same_call() -> None:
    call = read_call(written_call("get_weather", '{"city": "Paris", "unit": "c"}'), BOTH)
    assert call is not None
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris", "unit": "c"})


# --- read_call ---------------------------------------------------------------------------


def test_read_call_reads_a_valid_call() -> None:
    call = read_call('{"name": "get_weather", "arguments": {"city": "Paris"}}', BOTH)
    assert isinstance(call, ToolCall)
    assert call.id.startswith("call_") and len(call.id) > len("call_")
    assert call.name == "get_weather"
    assert isinstance(call.arguments, str)
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_read_call_arguments_default_to_an_empty_object() -> None:
    call = read_call('{"name": "get_time"}', BOTH)
    assert call is not None and (call.name, call.arguments) == ("get_time", "{}")


def test_read_call_keeps_arguments_order_and_nesting() -> None:
    text = '{"arguments": {"b": [1, {"c": null}], "a": "x"}, "name": "get_time"}'
    call = read_call(text, BOTH)
    assert call is not None and call.arguments == '{"b": [1, {"c": null}], "a": "x"}'


@pytest.mark.parametrize("text", [
    ' {"name": "get_time", "arguments": {}}',
    '\n\n  {"name": "get_time", "arguments": {}}\n',
    '\t{"name": "get_time", "arguments": {}}  ',
])
def test_read_call_allows_surrounding_whitespace(text: str) -> None:
    call = read_call(text, BOTH)
    assert call is not None and call.name == "get_time"


def test_read_call_ids_are_fresh() -> None:
    text = '{"name": "get_time", "arguments": {}}'
    ids = {call.id for call in (read_call(text, BOTH) for _ in range(20)) if call is not None}
    assert len(ids) == 20 and all(i.startswith("call_") for i in ids)


@pytest.mark.parametrize("text", [
    '{"name": "get_time", "arguments": {}, "id": "call_1"}',
    '{"name": "get_time", "arguments": {}, "type": "function"}',
    '{"function": {"name": "get_time", "arguments": {}}}',
])
def test_read_call_extra_keys_are_not_a_call(text: str) -> None:
    assert read_call(text, BOTH) is None


@pytest.mark.parametrize("text", [
    '{"name": "get_stock", "arguments": {}}',
    '{"name": "GET_TIME", "arguments": {}}',
    '{"arguments": {}}',
    '{"name": null, "arguments": {}}',
    '{"name": 5, "arguments": {}}',
])
def test_read_call_unknown_tool_is_not_a_call(text: str) -> None:
    assert read_call(text, BOTH) is None


def test_read_call_only_knows_the_tools_it_is_given() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert read_call(text, (TIME_TOOL,)) is None
    assert read_call(text, ()) is None


@pytest.mark.parametrize("arguments", ['"{}"', '"city=Paris"', "[]", '["Paris"]', "null", "5", "true"])
def test_read_call_non_object_arguments_are_not_a_call(arguments: str) -> None:
    assert read_call('{"name": "get_time", "arguments": ' + arguments + "}", BOTH) is None


@pytest.mark.parametrize("text", [
    "", "   ", "The weather in Paris is sunny.", "get_time()", '"get_time"',
    '[{"name": "get_time", "arguments": {}}]',
    'Sure: {"name": "get_time", "arguments": {}}',
    '{"name": "get_time", "arguments": {}} and then some',
    '{"name": "get_time", "arguments": {',
    "{not json}",
    "{}",
])
def test_read_call_text_is_not_a_call(text: str) -> None:
    assert read_call(text, BOTH) is None


@pytest.mark.parametrize("name", ['["get_time"]', '{"n": "get_time"}'])
def test_read_call_unhashable_name_is_not_a_call(name: str) -> None:
    assert read_call('{"name": ' + name + ', "arguments": {}}', BOTH) is None


def test_every_call_a_forced_grammar_allows_is_read_as_a_call() -> None:
    """A call that satisfies the forced-call schema is always read back as a call."""
    t = define("f", None, {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}, "tools[0].function")
    instance = {"name": "f", "arguments": {"city": "Paris"}}
    jsonschema.validate(instance, json.loads(call_schema((t,))))  # the grammar allows this answer
    call = read_call(json.dumps(instance), (t,))
    assert call is not None and json.loads(call.arguments) == {"city": "Paris"}


def test_new_call_id() -> None:
    assert new_call_id().startswith("call_") and len(new_call_id()) == len("call_") + 24
    assert new_call_id("toolu_").startswith("toolu_")
    assert new_call_id() != new_call_id()
