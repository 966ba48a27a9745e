"""Prefix cache: does a cache hit change greedy output, and what does it save on a long chat.

Runs the real llama.cpp engine in-process (provider/engines/llamacpp.py) on the default model.

Determinism (issue 14): for each of ``PROMPTS`` prompts, the greedy answer computed from an empty
KV is compared with the same request answered from a cache hit, in two cases: an identical repeat
(everything but the last prompt token reused) and a conversation's next turn (the earlier turn's
prompt and answer reused, the new user message evaluated). Also whether a sequence's greedy answer
depends on which others share its batch (8 at once against each alone).

Turn 10: a 10-turn conversation, each turn's TTFT with the account's cache and without (every
turn from an empty KV), in the same run.

``python bench/prefix_cache.py`` prints the figures docs/decisions.md quotes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from darkbloom.inference.catalog import DEFAULT_MODEL  # noqa: E402
from darkbloom.inference.request import parse_chat  # noqa: E402
from darkbloom.provider.engines.base import Finished, LocalModel, TextDelta  # noqa: E402
from darkbloom.provider.engines.llamacpp import LlamaCppModel  # noqa: E402

PROMPTS = 100
TOKENS = 24
TOPICS = ["the sea", "bread", "volcanoes", "chess", "bees", "the moon", "rivers", "glass",
          "maps", "clocks"]
ASKS = ["Write two sentences about {}.", "Give me three facts about {}.",
        "Explain {} to a child.", "Write a short poem about {}.", "What is surprising about {}?",
        "List some words related to {}.", "Describe {} in one paragraph.",
        "Why do people care about {}?", "Tell a tiny story involving {}.",
        "Summarize the history of {}."]


def prompts() -> list[str]:
    return [ask.format(topic) for topic in TOPICS for ask in ASKS][:PROMPTS]


def local_model() -> LocalModel:
    path = DEFAULT_MODEL.weights_path()
    assert path is not None
    return LocalModel(id=DEFAULT_MODEL.id, path=path, format="gguf", size_bytes=path.stat().st_size,
                      context_length=DEFAULT_MODEL.context_length)


@dataclass
class Answer:
    text: str
    cached: int
    ttft_s: float


async def ask(model: LlamaCppModel, messages: list[dict[str, str]], scope: str | None,
              tokens: int = TOKENS) -> Answer:
    request = parse_chat({"model": DEFAULT_MODEL.id, "messages": messages, "max_tokens": tokens,
                          "temperature": 0})
    start, first, text, cached = time.perf_counter(), 0.0, "", 0
    async for event in model.generate(request, tokens, threading.Event(), scope):
        if isinstance(event, TextDelta) and event.text:
            first = first or time.perf_counter()
            text += event.text
        elif isinstance(event, Finished):
            cached = event.cached_tokens
    return Answer(text, cached, first - start)


async def determinism() -> dict[str, tuple[int, int]]:
    """(answers that differ, cases measured) per kind of cache hit. Groups of 8 prompts run
    together (each in its own sequence; one account each), and each prompt alone as well."""
    model = LlamaCppModel(local_model(), slots=8, reuse="any")
    try:
        repeat = turn = batch = hits = 0
        texts = prompts()
        for start in range(0, len(texts), 8):
            group = [(n, [{"role": "user", "content": t}])
                     for n, t in enumerate(texts[start:start + 8], start)]

            ids = [n for n, _ in group]

            async def each(chats: list[list[dict[str, str]]], scoped: bool,
                           ids: list[int] = ids) -> list[Answer]:
                return list(await asyncio.gather(*(
                    ask(model, chat, f"account-{n}" if scoped else None)
                    for n, chat in zip(ids, chats, strict=True))))

            users = [chat for _, chat in group]
            clean = await each(users, False)
            alone = [await ask(model, chat, None) for chat in users]
            batch += sum(a.text != b.text for a, b in zip(clean, alone, strict=True))
            await each(users, True)
            again = await each(users, True)
            follows = [[*chat, {"role": "assistant", "content": answer.text},
                        {"role": "user", "content": "Say more."}]
                       for chat, answer in zip(users, clean, strict=True)]
            reused = await each(follows, True)
            fresh = await each(follows, False)
            repeat += sum(a.text != b.text for a, b in zip(again, clean, strict=True))
            turn += sum(a.text != b.text for a, b in zip(reused, fresh, strict=True))
            hits += sum(a.cached > 0 for a in again + reused)
            print(f"  {start + len(group)} prompts: repeat {repeat}, next turn {turn}, "
                  f"batch {batch} differ", flush=True)
        assert hits == 2 * len(texts), f"every reuse case must hit the cache ({hits})"
        return {"identical repeat (all but the last prompt token reused)": (repeat, len(texts)),
                "next turn (earlier prompt + answer reused)": (turn, len(texts)),
                "8 sequences in one batch vs each alone": (batch, len(texts))}
    finally:
        model.close()


async def turn_ttft(turns: int = 10, rounds: int = 3) -> dict[str, list[float]]:
    """TTFT per turn of one conversation, with the account's cache and without, interleaved."""
    model = LlamaCppModel(local_model(), slots=2, reuse="extend")
    try:
        ttft: dict[str, list[float]] = {"with": [], "without": []}
        prompt_tokens = 0
        for r in range(rounds):
            chat: list[dict[str, str]] = []
            for t in range(turns):
                chat.append({"role": "user",
                             "content": f"{ASKS[t % len(ASKS)].format(TOPICS[t])} Be detailed."})
                without = await ask(model, chat, None, 48)
                answer = await ask(model, chat, f"round-{r}", 48)
                if t == turns - 1:
                    ttft["without"].append(without.ttft_s * 1000)
                    ttft["with"].append(answer.ttft_s * 1000)
                    prompt_tokens = model.count_tokens(
                        parse_chat({"model": DEFAULT_MODEL.id, "messages": chat}))
                chat.append({"role": "assistant", "content": answer.text})
        ttft["prompt_tokens"] = [float(prompt_tokens)]
        return ttft
    finally:
        model.close()


def main() -> None:
    print("determinism over", PROMPTS, "prompts...", flush=True)
    for kind, (differ, total) in asyncio.run(determinism()).items():
        print(f"  {kind}: {differ} of {total} greedy answers differ")
    print("turn-10 TTFT with and without the prefix cache...", flush=True)
    result = asyncio.run(turn_ttft())
    print(f"  turn 10 ({result['prompt_tokens'][0]:.0f} prompt tokens): "
          f"with cache p50 {statistics.median(result['with']):.1f} ms, "
          f"without {statistics.median(result['without']):.1f} ms")


if __name__ == "__main__":
    main()
