"""Which engine capabilities a request needs (inference/capabilities.py), and the 400 an engine
without one of them gives, naming the parameter."""

from __future__ import annotations

from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.capabilities import needed, require
from darkbloom.inference.request import parse_chat, parse_completion
from darkbloom.provider.engines.base import CAPABILITIES

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(**body: Any) -> Any:
    return parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize(("body", "wants"), [
    ({}, set()),
    ({"tools": [TOOL]}, {"tools"}),  # offered (auto) is enough: the engine must handle a call
    ({"tools": [TOOL], "tool_choice": "none"}, set()),  # none offered, nothing to handle
    ({"response_format": {"type": "json_object"}}, {"json_schema"}),
    ({"response_format": {"type": "text"}}, set()),
    ({"logprobs": True}, {"logprobs"}),
    ({"seed": 7}, {"seed"}),
    ({"stop": ["x"]}, {"stop_sequences"}),
])
def test_needed(body: dict[str, Any], wants: set[str]) -> None:
    assert needed(chat(**body)) == wants


def test_text_completions_need_completions() -> None:
    assert needed(parse_completion({"model": "m", "prompt": "a", "seed": 1})) == {"completions", "seed"}


def test_every_need_is_a_known_capability() -> None:
    request = chat(tools=[TOOL], response_format={"type": "json_object"}, logprobs=True, seed=1,
                   stop=["x"])
    assert needed(request) | {"completions"} == CAPABILITIES


def test_require_names_the_parameter() -> None:
    require(chat(seed=1, stop=["x"]), frozenset({"seed", "stop_sequences"}))
    with pytest.raises(InvalidRequest) as caught:
        require(chat(seed=1, logprobs=True), frozenset({"seed"}))
    assert (caught.value.param, caught.value.code, caught.value.status_code) == (
        "logprobs", "unsupported_parameter", 400)
    assert "logprobs is not supported by this model's engine" in caught.value.message


def test_the_refusal_names_the_field_as_each_dialect_spells_it() -> None:
    from darkbloom.inference.anthropic_request import parse_messages
    from darkbloom.inference.responses_request import parse_responses

    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (parse_responses({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}}),
         "text.format"),
        (chat(response_format={"type": "json_object"}), "response_format"),
        (parse_messages({"model": "m", "max_tokens": 4, "messages": hi, "stop_sequences": ["x"]}),
         "stop_sequences"),
        (chat(stop=["x"]), "stop"),
        (parse_completion({"model": "m", "prompt": "a", "logprobs": 2}), "logprobs"),
        (parse_messages({"model": "m", "max_tokens": 4, "messages": hi, "tools": [
            {"name": "f", "input_schema": {"type": "object"}}]}), "tools"),
    ]
    for request, param in cases:
        with pytest.raises(InvalidRequest) as caught:
            require(request, frozenset({"completions"}))
        assert caught.value.param == param, (request.endpoint, caught.value.param)
        assert caught.value.message.startswith(param), caught.value.message
