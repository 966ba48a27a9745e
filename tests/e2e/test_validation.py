"""Every validation failure is a 400 (or 401/404/413) in OpenAI's error JSON, before routing."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.e2e.harness import MODEL, Coordinator

USER = [{"role": "user", "content": "hi"}]


def _bad(client: openai.OpenAI, **kwargs: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**{"model": MODEL, "messages": USER, **kwargs})
    return info.value


def _body(error: openai.APIStatusError) -> dict[str, Any]:
    body = error.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0].type"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 25}, "top_logprobs"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
)
def test_chat_validation(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    error = _body(_bad(client, **kwargs))
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


def test_n_greater_than_one_says_unsupported(client: openai.OpenAI) -> None:
    error = _body(_bad(client, n=3))
    assert error["code"] == "unsupported_parameter" and "not supported" in error["message"]


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    huge = "word " * 9000
    error = _body(_bad(client, messages=[{"role": "user", "content": huge}]))
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    error = _body(_bad(client, messages=[{"role": "user", "content": "word " * 6000}], max_tokens=4000))
    assert error["code"] == "context_length_exceeded"


def test_completions_validation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=3)
    assert _body(info.value)["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", echo=True)
    assert _body(info.value)["param"] == "echo"


def test_a_prompt_that_tokenizes_to_nothing_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="\x16", max_tokens=1)
    error = _body(info.value)
    assert error["code"] == "empty_prompt" and error["param"] == "prompt"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    error = _body(info.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_malformed_json(stack: Coordinator, body: bytes) -> None:
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {stack.api_key}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_model(stack: Coordinator) -> None:
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"messages": USER},
                          headers={"Authorization": f"Bearer {stack.api_key}"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_oversized_body_is_413(stack: Coordinator) -> None:
    body = b'{"model":"smollm2-135m","messages":[{"role":"user","content":"' + b"a" * (5 << 20) + b'"}]}'
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {stack.api_key}"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_auth_errors(stack: Coordinator) -> None:
    for key in ("sk-db-wrong", "not-even-a-key"):
        bad = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
        assert _body(info.value)["type"] == "authentication_error"
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_anthropic_style_key_header_accepted(stack: Coordinator) -> None:
    response = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                          json={"model": MODEL, "messages": USER, "max_tokens": 2},
                          headers={"x-api-key": stack.api_key})
    assert response.status_code == 200


def test_unknown_route_and_method_are_openai_errors(stack: Coordinator) -> None:
    response = httpx.get(f"{stack.base_url}/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    response = httpx.get(f"{stack.base_url}/v1/chat/completions")
    assert response.status_code == 405 and "error" in response.json()
