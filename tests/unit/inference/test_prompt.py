"""Chat-template rendering with tools, on a stand-in for a llama.cpp model (no model is loaded)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.anthropic_request import parse_messages
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest, parse_chat
from darkbloom.inference.responses_request import parse_responses
from darkbloom.inference.tools import system_prompt

CHATML = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LISTING_START = "You can call these functions:"


class FakeLlama:
    """What PromptBuilder reads from a llama_cpp.Llama: its metadata and special tokens."""

    def __init__(self, template: str = CHATML, bos: int = -1, eos: int = -1) -> None:
        self.metadata = {"tokenizer.chat_template": template}
        self._bos, self._eos = bos, eos
        self.detokenized: list[list[int]] = []

    def token_bos(self) -> int:
        return self._bos

    def token_eos(self) -> int:
        return self._eos

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        self.detokenized.append(tokens)
        return {1: b"<s>", 2: b"</s>"}[tokens[0]]


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone"}},
]


def turns(rendered: str) -> list[tuple[str, str]]:
    """(role, content) of each ChatML turn, the open assistant turn left out."""
    assert rendered.endswith("<|im_start|>assistant\n")
    body = rendered[: -len("<|im_start|>assistant\n")]
    out = []
    for chunk in body.split("<|im_end|>\n")[:-1]:
        assert chunk.startswith("<|im_start|>")
        role, _, content = chunk[len("<|im_start|>"):].partition("\n")
        out.append((role, content))
    return out


def render(request: GenerationRequest) -> list[tuple[str, str]]:
    return turns(PromptBuilder(FakeLlama()).render_chat(request))


def chat(**overrides: Any) -> GenerationRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Weather in Paris?"}]}
    body.update(overrides)
    return parse_chat(body)


def listed(content: str) -> list[str]:
    """The tool names in a system message's tools listing."""
    lines = content.split("\n")
    start = lines.index(LISTING_START)
    return [t["name"] for t in json.loads(lines[start + 1])]


def test_without_tools_the_conversation_is_rendered_as_is() -> None:
    rendered = PromptBuilder(FakeLlama()).render_chat(chat())
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert LISTING_START not in rendered


@pytest.mark.parametrize("choice", [None, "auto", "required"])
def test_tools_are_appended_to_the_first_system_message(choice: str | None) -> None:
    request = chat(tools=TOOLS, tool_choice=choice)
    assert render(request) == [
        ("system", "Be brief.\n\n" + system_prompt(request.tools)),
        ("user", "Weather in Paris?"),
    ]


def test_only_the_first_system_message_gets_the_tools() -> None:
    messages = [{"role": "system", "content": "One."}, {"role": "developer", "content": "Two."},
                {"role": "user", "content": "q"}]
    rendered = render(chat(messages=messages, tools=TOOLS))
    assert rendered[0][1].startswith("One.\n\n" + LISTING_START)
    assert rendered[1:] == [("system", "Two."), ("user", "q")]


def test_a_system_message_is_added_when_there_is_none() -> None:
    request = chat(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS)
    assert render(request) == [("system", system_prompt(request.tools)), ("user", "Weather in Paris?")]


def test_a_later_system_message_is_not_the_first() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "system", "content": "late"}]
    rendered = render(chat(messages=messages, tools=TOOLS))
    assert [role for role, _ in rendered] == ["system", "user", "system"]
    assert rendered[0][1].startswith(LISTING_START) and rendered[2] == ("system", "late")


def test_tool_choice_none_offers_no_tools() -> None:
    request = chat(tools=TOOLS, tool_choice="none")
    assert request.tools  # the tools are known, just not offered
    assert render(request) == [("system", "Be brief."), ("user", "Weather in Paris?")]
    alone = chat(messages=[{"role": "user", "content": "q"}], tools=TOOLS, tool_choice="none")
    assert render(alone) == [("user", "q")]


def test_a_named_tool_is_the_only_one_offered() -> None:
    rendered = render(chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert listed(rendered[0][1]) == ["get_time"]
    assert "get_weather" not in rendered[0][1]


def test_auto_and_required_offer_every_tool() -> None:
    for choice in ("auto", "required"):
        assert listed(render(chat(tools=TOOLS, tool_choice=choice))[0][1]) == ["get_weather", "get_time"]


def test_the_listing_carries_descriptions_and_parameters() -> None:
    content = render(chat(tools=TOOLS))[0][1]
    listing = json.loads(content.split("\n")[content.split("\n").index(LISTING_START) + 1])
    assert listing == [
        {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER},
        {"name": "get_time", "description": "Time in a timezone",
         "parameters": {"type": "object", "properties": {}}},
    ]


def test_rendering_leaves_the_request_unchanged() -> None:
    request = chat(tools=TOOLS)
    before = request.messages
    render(request)
    render(request)
    assert request.messages == before
    assert request.messages[0].content == "Be brief."


def test_history_with_calls_and_results_is_rendered() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "call_a", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]
    rendered = render(chat(messages=messages, tools=TOOLS))
    assert rendered[1:] == [
        ("user", "Weather in Paris?"),
        ("assistant", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        ("tool", "Result of get_weather: sunny"),
    ]
    assert rendered[0][0] == "system" and rendered[0][1].startswith(LISTING_START)


def test_anthropic_system_and_tools() -> None:
    request = parse_messages({"model": "m", "max_tokens": 16, "system": "Be brief.",
                              "messages": [{"role": "user", "content": "q"}],
                              "tools": [{"name": "get_time", "input_schema": {"type": "object"}}],
                              "tool_choice": {"type": "any"}})
    assert render(request) == [("system", "Be brief.\n\n" + system_prompt(request.tools)), ("user", "q")]
    request = parse_messages({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "q"}],
                              "tools": [{"name": "get_time", "input_schema": {"type": "object"}}],
                              "tool_choice": {"type": "none"}})
    assert render(request) == [("user", "q")]


def test_responses_instructions_and_tools() -> None:
    request = parse_responses({"model": "m", "instructions": "Be brief.", "input": "q",
                               "tools": [{"type": "function", "name": "get_time"}]})
    assert render(request) == [("system", "Be brief.\n\n" + system_prompt(request.tools)), ("user", "q")]
    request = parse_responses({"model": "m", "input": "q", "tool_choice": "none",
                               "tools": [{"type": "function", "name": "get_time"}]})
    assert render(request) == [("user", "q")]


def test_special_tokens_come_from_the_model() -> None:
    assert PromptBuilder(FakeLlama()).render_chat(chat()).startswith("<|im_start|>system")
    llama = FakeLlama(bos=1, eos=2)
    assert PromptBuilder(llama).render_chat(chat()).startswith("<s><|im_start|>system")
    assert llama.detokenized == [[1], [2]]


def test_a_template_error_is_a_400_without_the_conversation() -> None:
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    with pytest.raises(InvalidRequest) as info:
        PromptBuilder(FakeLlama(template)).render_chat(chat(tools=TOOLS))
    assert info.value.param == "messages" and "no system role" in info.value.message
    assert "Be brief." not in info.value.message and "get_weather" not in info.value.message
