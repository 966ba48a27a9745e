"""Issue 8 items 3, 13 and 14 held end to end: every malformed request is a 4xx in its route's
dialect (never a 500, a hang or a dead provider), JSON-schema work is bounded and off the event
loop, and a max_tokens cut inside a multi-byte character never reaches a client as U+FFFD."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator

USER = [{"role": "user", "content": "hi"}]
HUGE = 10**9  # maxLength/maxItems: an OOM in llama.cpp's converter before the fix
DIGITS_400 = 10**400
DEEP = "[" * 100_000


@pytest.fixture(scope="module")
def claude(stack: Coordinator) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.api_key, max_retries=0,
                                 timeout=120)
    yield client
    client.close()


def openai_error(call: Callable[[], Any], status: int = 400) -> dict[str, Any]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    assert info.value.status_code == status, info.value.response.text
    body = info.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    return dict(body["error"])


def anthropic_error(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(anthropic.BadRequestError) as info:
        call()
    body = info.value.response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    return dict(body["error"])


def raw_post(stack: Coordinator, path: str, body: bytes) -> httpx.Response:
    """For bodies no SDK can send: lone surrogates, invalid or over-deep JSON."""
    return httpx.post(f"{stack.base_url}{path}", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}",
                               "Content-Type": "application/json", "anthropic-version": "2023-06-01"})


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def tool(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def huge_string() -> dict[str, Any]:
    return {"type": "object", "properties": {"s": {"type": "string", "maxLength": HUGE}}}


# --- item 3: huge JSON-schema bounds ------------------------------------------------------


def test_huge_bound_in_response_format(client: openai.OpenAI) -> None:
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, response_format=schema_format(huge_string())))
    assert (error["param"], error["code"]) == ("response_format.json_schema.schema", "unsupported_parameter")
    assert "maxLength" in error["message"]


def test_huge_bound_in_a_forced_tool_call(client: openai.OpenAI) -> None:
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, tools=[tool(huge_string())],
        tool_choice="required"))
    assert (error["param"], error["code"]) == ("tools", "unsupported_parameter")


def test_huge_bound_in_responses_text_format(client: openai.OpenAI) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": HUGE}
    error = openai_error(lambda: client.responses.create(
        model=MODEL, input="hi", max_output_tokens=16,
        text={"format": {"type": "json_schema", "name": "x", "schema": schema}}))
    assert (error["param"], error["code"]) == ("text.format.schema", "unsupported_parameter")


def test_huge_bound_in_messages_tools(claude: anthropic.Anthropic) -> None:
    error = anthropic_error(lambda: claude.messages.create(
        model=MODEL, max_tokens=5, messages=USER,
        tools=[{"name": "f", "input_schema": huge_string()}], tool_choice={"type": "any"}))
    assert "maxLength" in error["message"]
    error = anthropic_error(lambda: claude.messages.count_tokens(
        model=MODEL, messages=USER,
        tools=[{"name": "f", "input_schema": huge_string()}], tool_choice={"type": "any"}))
    assert "maxLength" in error["message"]


def test_huge_pattern_quantifier(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": f"^a{{0,{HUGE}}}$"}}}
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, response_format=schema_format(schema)))
    assert error["code"] == "unsupported_parameter"


def test_coordinator_stays_responsive_while_refusing_huge_schemas(stack: Coordinator) -> None:
    """Before the fix one such request held the event loop for ~100 s (a provider's socket timed
    out); now each is refused before conversion, in a worker thread."""
    messages_body = {"model": MODEL, "max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"},
                     "tools": [{"name": "f", "input_schema": huge_string()}]}
    chat_body = {"model": MODEL, "messages": USER, "response_format": schema_format(huge_string())}
    headers = {"Authorization": f"Bearer {stack.api_key}", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=stack.base_url, timeout=30, headers=headers) as http, \
            ThreadPoolExecutor(max_workers=12) as pool:
        bad = [pool.submit(http.post, "/v1/messages", json=messages_body) for _ in range(4)]
        bad += [pool.submit(http.post, "/v1/chat/completions", json=chat_body) for _ in range(4)]
        health = [pool.submit(http.get, "/health") for _ in range(4)]
        assert all(f.result().status_code == 200 for f in health)
        assert [f.result().status_code for f in bad] == [400] * 8
    assert httpx.get(f"{stack.base_url}/health", timeout=5).status_code == 200


# --- item 13: malformed requests that were 500s -------------------------------------------


@pytest.mark.parametrize("key", ["temperature", "top_p"])
def test_400_digit_integer_sampling(client: openai.OpenAI, claude: anthropic.Anthropic, key: str) -> None:
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, extra_body={key: DIGITS_400}))
    assert error["param"] == key
    openai_error(lambda: client.responses.create(model=MODEL, input="hi", extra_body={key: DIGITS_400}))
    openai_error(lambda: client.completions.create(model=MODEL, prompt="hi", extra_body={key: -DIGITS_400}))
    anthropic_error(lambda: claude.messages.create(
        model=MODEL, max_tokens=5, messages=USER, extra_body={key: DIGITS_400}))


def test_top_k_beyond_a_c_int(client: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    error = anthropic_error(lambda: claude.messages.create(
        model=MODEL, max_tokens=5, messages=USER, extra_body={"top_k": 10**30}))
    assert "top_k" in error["message"]
    assert openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, extra_body={"top_k": 10**30}))["param"] == "top_k"


def test_top_k_at_the_c_int_limit_generates(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=MODEL, max_tokens=3, messages=USER,
                                     extra_body={"top_k": 2**31 - 1})
    assert message.usage.output_tokens >= 1


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"d": {"type": "string", "format": ["a"]}}},
    {"type": "object", "properties": [1]},
    {"type": "array", "items": 5},
    {"type": "object", "properties": {"s": {"type": "string", "pattern": 5}}},
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^{3}$"}}},
])
def test_malformed_schema_keywords(client: openai.OpenAI, claude: anthropic.Anthropic,
                                   schema: dict[str, Any]) -> None:
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, response_format=schema_format(schema)))
    assert error["param"] == "response_format.json_schema.schema"
    openai_error(lambda: client.responses.create(
        model=MODEL, input="hi", text={"format": {"type": "json_schema", "name": "x", "schema": schema}}))
    if schema.get("type") == "object":  # tool parameters must be objects
        error = openai_error(lambda: client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=5, tools=[tool(schema)], tool_choice="required"))
        assert error["param"] == "tools"
        anthropic_error(lambda: claude.messages.create(
            model=MODEL, max_tokens=5, messages=USER,
            tools=[{"name": "f", "input_schema": schema}], tool_choice={"type": "any"}))


def test_pattern_llama_cpp_refuses_no_longer_kills_the_provider(client: openai.OpenAI) -> None:
    """``^\\d+$`` converted to a grammar llama.cpp cannot parse; the provider's sampler then
    segfaulted. Now it is a 400 at the coordinator, and the provider keeps serving."""
    schema = {"type": "object", "properties": {"n": {"type": "string", "pattern": "^\\d+$"}}}
    for _ in range(2):
        error = openai_error(lambda: client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=5, response_format=schema_format(schema)))
        assert error["code"] == "unsupported_parameter" and "\\d" in error["message"]
    answer = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert answer.choices[0].finish_reason in ("length", "stop")


def test_deep_tool_call_arguments(client: openai.OpenAI) -> None:
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP}}]}
    error = openai_error(lambda: client.chat.completions.create(
        model=MODEL, max_tokens=5, messages=[*USER, call]))
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP}
    error = openai_error(lambda: client.responses.create(model=MODEL, input=[item]))
    assert error["param"] == "input[0].arguments"


SAID = [{"role": "user", "content": "a@b"}]  # "@" becomes a lone surrogate escape
SURROGATE_BODIES = {
    "/v1/chat/completions": {"model": MODEL, "max_tokens": 5, "messages": SAID},
    "/v1/messages": {"model": MODEL, "max_tokens": 5, "messages": SAID},
    "/v1/messages/count_tokens": {"model": MODEL, "messages": SAID},
    "/v1/responses": {"model": MODEL, "max_output_tokens": 16, "input": SAID},
}


@pytest.mark.parametrize("path", list(SURROGATE_BODIES))
@pytest.mark.parametrize("where", ["key", "content"])
def test_lone_surrogates(stack: Coordinator, path: str, where: str) -> None:
    text = json.dumps(SURROGATE_BODIES[path])
    text = text[:-1] + ', "\\ud800": 1}' if where == "key" else text.replace("@", "\\udc00")
    response = raw_post(stack, path, text.encode())
    assert response.status_code == 400, response.text
    if path.startswith("/v1/messages"):
        assert response.json()["type"] == "error"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "surrogate" in error["message"]


@pytest.mark.parametrize("depth", [65, 5_000, 100_000])
def test_request_json_nested_too_deep(stack: Coordinator, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for path in ("/v1/chat/completions", "/v1/messages"):
        response = raw_post(stack, path, b'{"model": "x", "metadata": ' + nested + b"}")
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        # Past 100,000 brackets the count refuses it before the depth is measured.
        assert error["type"] == "invalid_request_error"
        assert ("nested" if depth < 100_000 else "characters") in error["message"]
    response = raw_post(stack, "/v1/chat/completions", DEEP.encode())
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


# --- item 14: a cut inside a multi-byte character -----------------------------------------

EMOJI_PROMPT = [{"role": "user", "content": "Repeat this emoji ten times: 😀😀😀"}]


def _incomplete_tail(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return False


@pytest.fixture(scope="module")
def cut(client: openai.OpenAI) -> tuple[int, str]:
    """A max_tokens that ends inside a character, found from the tokens' raw bytes at
    temperature 0 (the test fails, not skips, if the model writes no multi-byte text)."""
    answer = client.chat.completions.create(model=MODEL, messages=EMOJI_PROMPT, max_tokens=24,
                                            temperature=0, seed=7, logprobs=True)
    assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.content
    data = b""
    for n, token in enumerate(answer.choices[0].logprobs.content, 1):
        assert token.bytes is not None and "\ufffd" not in token.token
        data += bytes(token.bytes)
        complete = data.decode(errors="ignore")
        if _incomplete_tail(data) and complete:  # some text, then part of a character
            assert complete == data[:len(complete.encode())].decode()
            return n, complete
    raise AssertionError(f"no cut inside a character in {data!r}")


def test_cut_inside_a_character_drops_the_tail(client: openai.OpenAI, cut: tuple[int, str]) -> None:
    max_tokens, expected = cut
    answer = client.chat.completions.create(model=MODEL, messages=EMOJI_PROMPT, max_tokens=max_tokens,
                                            temperature=0, seed=7)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.content == expected and "\ufffd" not in expected


def test_streamed_cut_inside_a_character_drops_the_tail(client: openai.OpenAI, cut: tuple[int, str]) -> None:
    max_tokens, expected = cut
    stream = client.chat.completions.create(model=MODEL, messages=EMOJI_PROMPT, max_tokens=max_tokens,
                                            temperature=0, seed=7, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == expected and "\ufffd" not in text


def test_messages_cut_inside_a_character(claude: anthropic.Anthropic, cut: tuple[int, str]) -> None:
    max_tokens, expected = cut
    message = claude.messages.create(model=MODEL, messages=EMOJI_PROMPT, max_tokens=max_tokens,
                                     extra_body={"temperature": 0})
    assert message.stop_reason == "max_tokens"
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text == expected


def test_logprob_tokens_show_partial_bytes(client: openai.OpenAI, cut: tuple[int, str]) -> None:
    max_tokens, _ = cut
    answer = client.chat.completions.create(model=MODEL, messages=EMOJI_PROMPT, max_tokens=max_tokens,
                                            temperature=0, seed=7, logprobs=True, top_logprobs=3)
    assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.content
    last = answer.choices[0].logprobs.content[-1]
    assert last.bytes and "\ufffd" not in last.token and "\\x" in last.token
    assert all("\ufffd" not in alt.token for alt in last.top_logprobs)
