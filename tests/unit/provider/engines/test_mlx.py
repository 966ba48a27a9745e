"""The mlx-lm adapter against a stand-in that keeps mlx-lm 0.32's signatures (mlx_standin.py):
what it passes (prompt from the chat template, sampling, max tokens, seed), the deltas it
streams, exact usage, finish reasons, cancel within a token, capabilities and problem()."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.request import GenerationRequest, parse_chat, parse_completion
from darkbloom.provider.engines import mlx as mlx_engine
from darkbloom.provider.engines.base import Finished, GenerationEvent, LocalModel, Started, TextDelta
from darkbloom.provider.engines.mlx import MlxBackend, MlxModel

from . import mlx_standin
from .mlx_standin import BOS, EOS, ids

HELLO = [*ids("hello world"), EOS]


def local(tmp_path: Path, context_length: int = 4096) -> LocalModel:
    return LocalModel(id="tiny-mlx", path=tmp_path, format="mlx", size_bytes=1,
                      context_length=context_length)


def chat(**body: Any) -> GenerationRequest:
    return parse_chat({"model": "tiny-mlx", "messages": [{"role": "user", "content": "hi"}], **body})


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: list[int],
         **kwargs: Any) -> tuple[MlxModel, mlx_standin.Calls]:
    calls = mlx_standin.install(monkeypatch, script, **kwargs)
    return MlxBackend().load(local(tmp_path), slots=1, threads=None), calls


async def run(model: MlxModel, request: GenerationRequest, cap: int = 8192,
              cancel: threading.Event | None = None) -> list[GenerationEvent]:
    return [e async for e in model.generate(request, cap, cancel or threading.Event())]


def text(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def finished(events: list[GenerationEvent]) -> Finished:
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished) for e in events) == 1
    return events[-1]


def test_the_stand_in_is_strict_about_names() -> None:
    """A wrong keyword fails against the stand-in as against mlx-lm, so the tests below can fail."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        mlx_standin.install(monkeypatch, HELLO)
        import mlx_lm
        from mlx_lm.sample_utils import make_sampler

        with pytest.raises(TypeError):
            make_sampler(temperature=0.5)
        model, tokenizer = mlx_lm.load("x")
        with pytest.raises(TypeError):
            mlx_lm.stream_generate(model, tokenizer, [1], max_tokens=1, temp=0.5)
    finally:
        monkeypatch.undo()


async def test_passes_the_templated_prompt_sampling_and_budget(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    request = chat(temperature=0.3, top_p=0.8, top_k=5, min_p=0.1, seed=42, max_tokens=50,
                   presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.1)
    events = await run(model, request, cap=100)

    assert calls.load[0][0] == str(tmp_path)
    assert calls.templates == [{"tokenize": False, "add_generation_prompt": True,
                                "chat_template": None}]
    prompt = ids("<user>hi<assistant>")  # the template's text, no BOS added on top of it
    assert calls.generate == [{"prompt": prompt, "max_tokens": 50, "draft_model": None,
                               "sampler": ("sampler", 1), "logits_processors": [
                                   ("processor", "repetition"), ("processor", "presence"),
                                   ("processor", "frequency")]}]
    assert calls.sampler == [{"temp": 0.3, "top_p": 0.8, "min_p": 0.1, "min_tokens_to_keep": 1,
                              "top_k": 5, "xtc_probability": 0.0, "xtc_threshold": 0.1}]
    assert calls.processors == [{"logit_bias": None, "repetition_penalty": 1.1,
                                 "repetition_context_size": 64, "presence_penalty": 0.5,
                                 "presence_context_size": 64, "frequency_penalty": 0.25,
                                 "frequency_context_size": 64}]
    assert calls.seeds == [42]
    assert events[0] == Started(len(prompt))
    assert model.count_tokens(request) == len(prompt)
    assert text(events) == "hello world"


async def test_defaults_add_no_penalties_and_seed_fresh(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    await run(model, chat())
    await run(model, chat(seed=-1))
    assert calls.processors[0]["repetition_penalty"] is None
    assert calls.processors[0]["presence_penalty"] is None
    assert calls.processors[0]["frequency_penalty"] is None
    assert calls.generate[0]["logits_processors"] == []
    assert calls.generate[0]["max_tokens"] == 4096 - len(ids("<user>hi<assistant>"))
    unseeded, negative = calls.seeds
    assert 0 <= unseeded < 2**64
    assert negative == 2**64 - 1  # a negative seed maps onto MLX's uint64 seed


async def test_end_of_sequence_is_a_stop_and_not_counted(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    model, _ = load(monkeypatch, tmp_path, HELLO)
    events = await run(model, chat())
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == len("hello world")  # streamed as it came, one delta per token here
    assert finished(events) == Finished("stop", len(ids("<user>hi<assistant>")), 11)


async def test_max_tokens_is_a_length_finish(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    events = await run(model, chat(max_tokens=3))
    assert calls.generate[0]["max_tokens"] == 3
    assert text(events) == "hel"
    assert finished(events).finish_reason == "length"
    assert finished(events).completion_tokens == 3


async def test_the_cap_bounds_the_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    events = await run(model, chat(), cap=4)
    assert calls.generate[0]["max_tokens"] == 4
    assert text(events) == "hell"
    assert finished(events).finish_reason == "length"


async def test_a_stop_sequence_ends_it_and_is_cut(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    events = await run(model, chat(stop=["lo w", "zzz"]))
    assert text(events) == "hel"
    done = finished(events)
    assert (done.finish_reason, done.stop_sequence) == ("stop", "lo w")
    assert done.completion_tokens == len("hello w")  # generated up to the stop's last token
    assert calls.closed and calls.pulled == len("hello w")


async def test_held_back_text_comes_out_when_no_stop_matches(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    model, _ = load(monkeypatch, tmp_path, HELLO)
    events = await run(model, chat(stop=["ldx"]))
    assert text(events) == "hello world"
    assert finished(events).stop_sequence is None


async def test_cancel_stops_within_a_token(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, [*ids("a" * 500), EOS])
    cancel = threading.Event()
    calls.on_token = lambda n: cancel.set() if n == 3 else None
    events = await run(model, chat(), cancel=cancel)
    assert calls.pulled == 3 and calls.closed
    assert text(events) == "aaa"
    assert finished(events) == Finished("cancelled", len(ids("<user>hi<assistant>")), 3)


async def test_a_consumer_that_leaves_stops_the_thread(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, [*ids("a" * 500), EOS])
    gate = threading.Event()  # the model thread waits here for its 2nd token until the test says
    calls.on_token = lambda n: gate.wait(timeout=30) if n == 2 else None
    cancel = threading.Event()
    stream = model.generate(chat(), 8192, cancel)
    async for event in stream:
        if isinstance(event, TextDelta):
            assert model.busy_slots == 1
            break
    await stream.aclose()
    assert cancel.is_set()
    assert model.busy_slots == 0
    gate.set()
    # The next request runs on the same thread once the abandoned one has stopped, a token later.
    events = await run(model, chat(max_tokens=2))
    assert text(events) == "aa"
    # The abandoned request took at most one token after its consumer left (1 or 2 in all).
    assert calls.closed and calls.pulled in (1 + 2, 2 + 2)


async def test_text_completions_get_a_bos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    request = parse_completion({"model": "tiny-mlx", "prompt": "Once", "max_tokens": 5})
    events = await run(model, request)
    assert calls.generate[0]["prompt"] == [BOS, *ids("Once")]
    assert calls.templates == []
    assert events[0] == Started(5)


async def test_no_template_renders_chatml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO, chat_template=None)
    await run(model, chat())
    assert calls.generate[0]["prompt"] == ids("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


async def test_a_template_refusal_is_a_400(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    request = parse_chat({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "secret result"}]})
    with pytest.raises(InvalidRequest) as caught:
        await run(model, request)
    assert "no tool role" in caught.value.message and "secret" not in caught.value.message
    assert calls.generate == []


async def test_too_long_a_prompt_is_refused_before_generating(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    calls = mlx_standin.install(monkeypatch, HELLO)
    model = MlxBackend().load(local(tmp_path, context_length=10), slots=1, threads=None)
    with pytest.raises(InvalidRequest) as caught:
        await run(model, chat(messages=[{"role": "user", "content": "x" * 20}]))
    assert caught.value.code == "context_length_exceeded"
    assert calls.generate == []


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": "auto"}, "tools"),
])
async def test_what_it_cannot_do_is_a_400(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          body: dict[str, Any], param: str) -> None:
    model, calls = load(monkeypatch, tmp_path, HELLO)
    with pytest.raises(InvalidRequest) as caught:
        await run(model, chat(**body))
    assert (caught.value.param, caught.value.code) == (param, "unsupported_parameter")
    assert calls.generate == [] and model.busy_slots == 0


def test_capabilities_and_slots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mlx_standin.install(monkeypatch, HELLO)
    model = MlxBackend().load(local(tmp_path), slots=4, threads=8)
    assert model.capabilities == {"seed", "stop_sequences", "completions"}
    assert (model.slots, model.busy_slots) == (1, 0)
    assert len(model.template_hash) == 64
    model.close()


def test_a_missing_directory_is_not_a_hub_name(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    calls = mlx_standin.install(monkeypatch, HELLO)
    with pytest.raises(FileNotFoundError):
        MlxBackend().load(local(tmp_path / "gone"), slots=1, threads=None)
    assert calls.load == []


def test_problem_off_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    mlx_standin.install(monkeypatch, HELLO)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(mlx_engine.platform, "machine", lambda: "x86_64")
    problem = MlxBackend().problem()
    assert problem is not None and "Apple Silicon" in problem and "\n" not in problem


def test_problem_without_mlx_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(mlx_engine.platform, "machine", lambda: "arm64")
    monkeypatch.setitem(sys.modules, "mlx_lm", None)
    assert MlxBackend().problem() == "mlx-lm is not installed: pip install 'darkbloom[mlx]'"
    mlx_standin.install(monkeypatch, HELLO)
    assert MlxBackend().problem() is None
