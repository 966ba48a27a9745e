"""Chat and text completions through the stock openai SDK, streaming and not."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.e2e.harness import MODEL, Coordinator

HELLO = [{"role": "user", "content": "Name three colours."}]


def test_health_and_models(stack: Coordinator, client: openai.OpenAI) -> None:
    health = httpx.get(f"{stack.base_url}/health").json()
    assert health == {"status": "ok", "providers": 1}
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    entry = models.data[0]
    assert entry.object == "model" and entry.owned_by == "darkbloom"
    assert entry.model_extra and entry.model_extra["metadata"]["provider_count"] == 1
    assert entry.model_extra["metadata"]["context_length"] == 8192


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=12)
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert raw.headers["x-provider-encrypted"] == "true"
    assert raw.headers["x-request-id"] and raw.headers["x-inference-job-id"]


def test_chat_length_finish(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    """Same greedy request, streamed and not, gives the same text and the same usage."""
    args = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**args)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**args, stream=True,  # type: ignore[call-overload]
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == whole.choices[0].finish_reason
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]
    assert all(c.id == chunks[0].id for c in chunks)


def test_stream_wire_format(stack: Coordinator) -> None:
    """The raw SSE bytes: data events, usage on the finish chunk by default, then [DONE]."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert events[-2].startswith(": darkbloom-receipt ")  # an SSE comment, skipped by SDKs
    assert all(e.startswith("data: ") for e in events[:-2])
    assert '"finish_reason":"length"' in events[-3] and '"usage"' in events[-3]


def test_deterministic_at_temperature_zero(client: openai.OpenAI) -> None:
    """llama.cpp's prompt cache must not change greedy output, even with other prompts between."""
    ask = dict(model=MODEL, max_tokens=20, temperature=0,
               messages=[{"role": "user", "content": "What is the capital of Italy?"}])
    texts = []
    for other in ("Tell me a joke.", "What is the capital of Italy? Answer briefly.", "Hi"):
        texts.append(client.chat.completions.create(**ask).choices[0].message.content)  # type: ignore[call-overload]
        client.chat.completions.create(model=MODEL, max_tokens=5,
                                       messages=[{"role": "user", "content": other}])
    assert len(set(texts)) == 1, texts


def test_same_seed_same_text(client: openai.OpenAI) -> None:
    ask = dict(model=MODEL, max_tokens=16, temperature=1.0, seed=1234,
               messages=[{"role": "user", "content": "Invent a name for a cat."}])
    first = client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    second = client.chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    assert first == second


def test_stop_sequence(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=12,
                                     temperature=0).choices[0].text
    assert " 7" in free, free  # the model does count on
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=12,
                                        temperature=0, stop=[" 7"])
    assert stopped.choices[0].text == free[: free.index(" 7")]
    assert stopped.choices[0].finish_reason == "stop"


def test_completions(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                      temperature=0)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text and reply.usage is not None
    assert reply.usage.completion_tokens <= 8
    streamed = list(client.completions.create(model=MODEL, prompt="The capital of France is",
                                              max_tokens=8, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_alias_resolves_and_is_echoed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=HELLO, max_tokens=3)
    assert reply.model == "SmolLM2-135M-Instruct"


def test_system_and_multi_turn(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": [{"type": "text", "text": "And grass?"}]},
    ])
    assert reply.choices[0].message.content


def test_logprobs(client: openai.OpenAI) -> None:
    """Logprobs come from the raw model distribution: greedy picks the top alternative."""
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert bytes(entry.bytes or []).decode() == entry.token
    streamed = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                                   logprobs=True, stream=True))
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content or []]
    assert tokens == [e.token for e in entries]
    legacy = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4,
                                       temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and "".join(lp.tokens) == legacy.choices[0].text
    assert lp.top_logprobs is not None and all(len(alts) == 2 for alts in lp.top_logprobs)


def test_penalties_are_honoured(client: openai.OpenAI) -> None:
    """presence/frequency penalties reach the sampler: a repetitive greedy answer changes."""
    ask: dict[str, Any] = dict(model=MODEL, max_tokens=40, temperature=0,
                               messages=[{"role": "user", "content": "Repeat the word cat many times."}])
    plain = client.chat.completions.create(**ask).choices[0].message.content
    penalised = client.chat.completions.create(**ask, presence_penalty=2.0,
                                               frequency_penalty=2.0).choices[0].message.content
    assert plain != penalised
