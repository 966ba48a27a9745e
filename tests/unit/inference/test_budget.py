"""output_budget: the cap on generated tokens given the prompt and the context window."""

from __future__ import annotations

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.budget import output_budget
from darkbloom.inference.request import GenerationRequest, Message


def chat_request(max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(endpoint="/v1/chat/completions", model="m",
                             messages=(Message("user", "hi"),), max_tokens=max_tokens)


def completion_request(max_tokens: int | None = None) -> GenerationRequest:
    return GenerationRequest(endpoint="/v1/completions", model="m", prompt="hi", max_tokens=max_tokens)


def test_default_used_when_it_fits() -> None:
    assert output_budget(chat_request(), prompt_tokens=100, context_length=4096,
                         default_max_tokens=1000) == 1000


def test_default_capped_to_room() -> None:
    assert output_budget(chat_request(), prompt_tokens=100, context_length=4096,
                         default_max_tokens=8192) == 3996
    assert output_budget(completion_request(), prompt_tokens=4095, context_length=4096,
                         default_max_tokens=8192) == 1


@pytest.mark.parametrize("max_tokens", [1, 500, 3996])
def test_explicit_max_tokens_that_fits_is_kept(max_tokens: int) -> None:
    assert output_budget(chat_request(max_tokens), prompt_tokens=100, context_length=4096,
                         default_max_tokens=8192) == max_tokens


def test_explicit_max_tokens_below_default_is_not_raised() -> None:
    assert output_budget(chat_request(10), prompt_tokens=10, context_length=4096,
                         default_max_tokens=8192) == 10


@pytest.mark.parametrize(("request_", "param"), [
    (chat_request(3997), "messages"),
    (completion_request(3997), "prompt"),
    (chat_request(32_768), "messages"),
])
def test_explicit_too_large_is_context_length_exceeded(request_: GenerationRequest, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        output_budget(request_, prompt_tokens=100, context_length=4096, default_max_tokens=8192)
    err = info.value
    assert (err.param, err.code, err.status_code) == (param, "context_length_exceeded", 400)
    assert "maximum context length is 4096 tokens" in err.message
    assert f"requested {100 + (request_.max_tokens or 0)} tokens" in err.message


@pytest.mark.parametrize("prompt_tokens", [4096, 4097, 10_000])
@pytest.mark.parametrize(("request_", "param"), [
    (chat_request(), "messages"),
    (chat_request(1), "messages"),
    (completion_request(), "prompt"),
    (completion_request(5), "prompt"),
])
def test_prompt_filling_context(prompt_tokens: int, request_: GenerationRequest, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        output_budget(request_, prompt_tokens=prompt_tokens, context_length=4096, default_max_tokens=8192)
    err = info.value
    assert (err.param, err.code) == (param, "context_length_exceeded")
    assert f"resulted in {prompt_tokens} tokens" in err.message


@pytest.mark.parametrize(("request_", "param"), [(chat_request(), "messages"),
                                                 (completion_request(), "prompt")])
def test_no_prompt_tokens_is_refused(request_: GenerationRequest, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        output_budget(request_, prompt_tokens=0, context_length=4096, default_max_tokens=16)
    assert caught.value.code == "empty_prompt" and caught.value.param == param
