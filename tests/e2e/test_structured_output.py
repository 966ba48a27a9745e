"""response_format / text.format: grammar-enforced JSON that parses and validates, even at 135M."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.harness import MODEL

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "pets", "role"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person."}]


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_chat_json_schema_always_validates(client: openai.OpenAI, temperature: float) -> None:
    for _ in range(2):
        reply = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=300, temperature=temperature,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), PERSON)


def test_chat_json_object_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, max_tokens=400, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object with a colour and a number."}])
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_streamed_json_schema_validates(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=300, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_responses_text_format_json_schema(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Describe a person.", max_output_tokens=300,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), PERSON)


def test_unenforceable_schema_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=10,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}})
    error = info.value.response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert error["code"] == "unsupported_parameter"


def test_keywords_the_grammar_cannot_enforce_are_refused(client: openai.OpenAI) -> None:
    """llama.cpp's converter ignores numeric bounds; rather than return output that may break
    them, such schemas are a 400 naming the keyword."""
    schema = {"type": "object", "properties": {"age": {"type": "integer", "maximum": 150}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=10,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    error = info.value.response.json()["error"]
    assert error["code"] == "unsupported_parameter" and "maximum" in error["message"]
