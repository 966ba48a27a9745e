"""Scripted vLLM check for a machine with an NVIDIA GPU: the provider's real vLLM adapter, for real.

Loads a small safetensors model directory through ``VllmBackend`` (the code the provider runs),
streams one greedy chat completion after a short warm-up, and prints one JSON object: load time,
time to first token, decode tokens per second, usage and finish reason. With ``--write`` it also
records the result in docs/BENCHMARKS.md (the section between the vllm markers). Not a test:
nothing here asserts a number. It never prints the generated text.

    pip install -e '.[vllm]'
    .venv/bin/python bench/vllm_check.py --model /models/Qwen2.5-0.5B-Instruct --write

The machine needs no network: point ``--model`` at a model directory already on its disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

from darkbloom.inference.request import parse_chat
from darkbloom.provider.engines.base import Finished, LocalModel, Started, TextDelta
from darkbloom.provider.engines.vllm import VllmBackend

ROOT = Path(__file__).resolve().parents[1]
MARK_START = "<!-- vllm: bench/vllm_check.py -->"
MARK_END = "<!-- /vllm -->"
MESSAGES = [{"role": "user", "content": "Write a very long essay about the history of the sea."}]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def local_model(model_dir: Path, context_length: int = 4096) -> LocalModel:
    return LocalModel(id=model_dir.name, path=model_dir, format="safetensors",
                      size_bytes=_size(model_dir), context_length=context_length)


async def check(local: LocalModel, backend: VllmBackend, *, max_tokens: int = 256) -> dict[str, Any]:
    if (problem := backend.problem()) is not None:
        return {"ok": False, "error": problem}
    began = time.perf_counter()
    loaded = await asyncio.to_thread(backend.load, local, slots=1, threads=None)
    load_s = time.perf_counter() - began
    try:
        body = {"model": local.id, "messages": MESSAGES, "temperature": 0}
        async for _ in loaded.generate(parse_chat({**body, "max_tokens": 8}), 8, threading.Event()):
            pass  # warm-up: first-call compilation and graph capture stay out of the numbers
        request = parse_chat({**body, "max_tokens": max_tokens})
        sent = time.perf_counter()
        first: float | None = None
        prompt_tokens = 0
        done: Finished | None = None
        async for event in loaded.generate(request, max_tokens, threading.Event()):
            if isinstance(event, Started):
                prompt_tokens = event.prompt_tokens
            elif isinstance(event, TextDelta) and event.text and first is None:
                first = time.perf_counter()
            elif isinstance(event, Finished):
                done = event
        ended = time.perf_counter()
    finally:
        await asyncio.to_thread(loaded.close)
    assert done is not None and first is not None, "the stream ended without text or Finished"
    decode_s = ended - first
    return {
        "ok": True,
        "engine": backend.name,
        "model": local.id,
        "load_s": round(load_s, 2),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "finish_reason": done.finish_reason,
        "ttft_ms": round((first - sent) * 1000, 1),
        # Tokens after the first, over the time after the first: decode alone, as `benchmark` has it.
        "decode_tps": round((done.completion_tokens - 1) / decode_s, 1) if decode_s > 0 else None,
        "machine": f"{platform.system()} {platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def section(result: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items())
    return f"""{MARK_START}
## vLLM on a GPU (issue 11)

`bench/vllm_check.py`: one greedy chat completion through the provider's `VllmBackend` after a
warm-up, on {result.get('date', '?')}.

| field | value |
|---|---|
{rows}
{MARK_END}"""


def record(result: dict[str, Any], out: Path = ROOT / "docs" / "BENCHMARKS.md") -> None:
    text = out.read_text()
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section(result) + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section(result) + "\n"
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, required=True, help="a safetensors model directory")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--write", action="store_true", help="record it in docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not args.model.is_dir():
        result: dict[str, Any] = {"ok": False,
                                  "error": f"no model directory at {args.model}: pass --model DIR"}
    else:
        backend = VllmBackend(gpu_memory_utilization=args.gpu_memory_utilization)
        result = asyncio.run(check(local_model(args.model, args.context_length), backend,
                                   max_tokens=args.max_tokens))
    print(json.dumps(result))
    if result["ok"] and args.write:
        record(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
