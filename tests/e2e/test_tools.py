"""Function calling through each stock SDK: forced calls are grammar-constrained, so their
arguments always parse and match the tool's schema; results feed the next turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False,
}
TIME_PARAMS: dict[str, Any] = {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}},
                               "required": ["tz"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone",
                                      "parameters": TIME_PARAMS}},
]
ASK: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}


@pytest.fixture(scope="module")
def claude(stack: Coordinator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_required_call_always_parses_and_validates(client: openai.OpenAI, temperature: float) -> None:
    for _ in range(2):
        reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=150,
                                               tool_choice="required", temperature=temperature)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_is_the_one_called(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=150,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME_PARAMS)


def test_none_and_auto_answer_in_text_when_the_model_does(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                           max_tokens=20)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content
    auto = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=40)
    message = auto.choices[0].message
    if message.tool_calls:  # a call chosen by the model itself must still be well formed
        json.loads(message.tool_calls[0].function.arguments)
        assert auto.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content


def test_tool_result_in_the_next_turn(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=150,
                                           tool_choice="required")
    call = (first.choices[0].message.tool_calls or [])[0]
    follow = client.chat.completions.create(model=MODEL, tools=TOOLS, max_tokens=30, temperature=0,
                                            messages=[*ASK, first.choices[0].message.model_dump(),
                                                      {"role": "tool", "tool_call_id": call.id,
                                                       "content": "18 degrees, sunny"}])
    assert follow.choices[0].message.content is not None
    assert follow.usage is not None and follow.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_streamed_tool_call_deltas_follow_openai(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS[:1],
                                                 tool_choice="required", max_tokens=150, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0][0]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function and first.function.name == "get_weather" and first.function.arguments == ""
    arguments = "".join((d[0].function.arguments or "") for d in deltas if d[0].function)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": WEATHER_PARAMS}]
    message = claude.messages.create(model=MODEL, max_tokens=150, messages=ASK, tools=tools,
                                     tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use"
    [block] = [b for b in message.content if b.type == "tool_use"]
    assert block.id.startswith("toolu_") and block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER_PARAMS)
    with claude.messages.stream(model=MODEL, max_tokens=150, messages=ASK, tools=tools,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    jsonschema.validate(streamed.input, WEATHER_PARAMS)
    reply = claude.messages.create(model=MODEL, max_tokens=20, tools=tools, messages=[
        *ASK, {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                      "content": "18 degrees"}]}])
    assert reply.content


def test_responses_function_call(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMS}]
    response = client.responses.create(model=MODEL, input="Weather in Rome?", tools=tools,
                                       tool_choice="required", max_output_tokens=150)
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.call_id.startswith("call_") and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    with client.responses.stream(model=MODEL, input="Weather in Rome?", tools=tools,
                                 tool_choice="required", max_output_tokens=150) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in types and types[-1] == "response.completed"
    assert final.output[-1].type == "function_call"
    follow = client.responses.create(model=MODEL, tools=tools, max_output_tokens=20, input=[
        {"role": "user", "content": "Weather in Rome?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"}])
    assert follow.status in ("completed", "incomplete")


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}],
      "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_are_400s(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **kwargs)
    assert info.value.response.json()["error"]["param"] == param
