"""The vLLM adapter against a stand-in that keeps vLLM 0.33's V1 async API (vllm_standin.py): the
engine arguments and SamplingParams it passes, the tokens prompt from the chat template, text
deltas diffed from cumulative outputs, exact usage, finish reasons, abort on cancel, structured
outputs for JSON and forced tool calls, capabilities and problem()."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from darkbloom.errors import InvalidRequest
from darkbloom.inference.request import GenerationRequest, parse_chat, parse_completion
from darkbloom.inference.tools import allowed, call_schema
from darkbloom.provider.engines import vllm as vllm_engine
from darkbloom.provider.engines.base import Finished, GenerationEvent, LocalModel, Started, TextDelta
from darkbloom.provider.engines.vllm import VllmBackend, VllmModel

from . import vllm_standin
from .vllm_standin import BOS, EOS, ids

HELLO = [*ids("hello world"), EOS]
PROMPT = ids("<user>hi<assistant>")
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

Serve = Callable[..., tuple[VllmModel, vllm_standin.Calls]]


def local(tmp_path: Path, context_length: int = 4096) -> LocalModel:
    return LocalModel(id="tiny-hf", path=tmp_path, format="safetensors", size_bytes=1,
                      context_length=context_length)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Serve]:
    loaded: list[VllmModel] = []

    def make(script: list[int], slots: int = 1,
             context_length: int = 4096) -> tuple[VllmModel, vllm_standin.Calls]:
        calls = vllm_standin.install(monkeypatch, script)
        model = VllmBackend().load(local(tmp_path, context_length), slots=slots, threads=None)
        loaded.append(model)
        return model, calls

    yield make
    for model in loaded:
        model.close()


def chat(**body: Any) -> GenerationRequest:
    return parse_chat({"model": "tiny-hf", "messages": [{"role": "user", "content": "hi"}], **body})


async def run(model: VllmModel, request: GenerationRequest, cap: int = 8192,
              cancel: threading.Event | None = None) -> list[GenerationEvent]:
    return [e async for e in model.generate(request, cap, cancel or threading.Event())]


def deltas(events: list[GenerationEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


def finished(events: list[GenerationEvent]) -> Finished:
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Finished) for e in events) == 1
    return events[-1]


def test_the_stand_in_is_strict_about_names() -> None:
    """A wrong name fails against the stand-in as against vLLM, so the tests below can fail."""
    with pytest.raises(TypeError):
        vllm_standin.SamplingParams(temp=0.5)
    with pytest.raises(TypeError):
        vllm_standin.AsyncEngineArgs(max_seqs=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        vllm_standin.AsyncLLM().generate({}, vllm_standin.SamplingParams(), "r", None)  # type: ignore[call-arg]


async def test_engine_arguments(serve: Serve, tmp_path: Path) -> None:
    model, calls = serve(HELLO, slots=3)
    assert vllm_standin.engine_args(calls) == {
        "model": str(tmp_path), "tokenizer": None, "dtype": "auto", "seed": 0,
        "max_model_len": 4096, "gpu_memory_utilization": 0.9, "max_num_seqs": 3,
        "enforce_eager": False, "disable_log_stats": True, "enable_log_requests": False,
    }
    assert (model.slots, model.busy_slots) == (3, 0)
    assert model.capabilities == {"tools", "json_schema", "seed", "stop_sequences", "completions"}
    assert len(model.template_hash) == 64


async def test_sampling_params_and_the_tokens_prompt(serve: Serve) -> None:
    model, calls = serve(HELLO)
    request = chat(temperature=0.3, top_p=0.8, top_k=5, min_p=0.1, seed=42, max_tokens=50,
                   presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.1,
                   stop=["zzz", "qq"])
    events = await run(model, request, cap=100)
    [(prompt, params, request_id)] = calls.generate
    # What the template rendered, no BOS on top; with no cache scope, a salt of its own: vLLM's
    # prefix cache never serves this request from another's prompt.
    assert prompt == {"prompt_token_ids": PROMPT, "cache_salt": request_id}
    assert calls.templates == [{"tokenize": False, "chat_template": None,
                                "add_generation_prompt": True}]
    assert params.given == {
        "max_tokens": 50, "temperature": 0.3, "top_p": 0.8, "top_k": 5, "min_p": 0.1, "seed": 42,
        "stop": ["zzz", "qq"], "repetition_penalty": 1.1, "presence_penalty": 0.5,
        "frequency_penalty": 0.25, "structured_outputs": None,
    }
    assert len(request_id) == 32
    assert events[0] == Started(len(PROMPT)) == Started(model.count_tokens(request))


async def test_defaults(serve: Serve) -> None:
    model, calls = serve(HELLO)
    await run(model, chat(), cap=300)
    await run(model, chat())
    first, second = (params for _, params, _ in calls.generate)
    assert (first.max_tokens, first.seed, first.stop, first.temperature, first.top_p) == (
        300, None, None, 0.7, 0.9)
    assert second.max_tokens == 4096 - len(PROMPT)  # what the context leaves
    assert calls.generate[0][2] != calls.generate[1][2]  # one request id each


async def test_deltas_are_the_new_text_and_eos_is_not_counted(serve: Serve) -> None:
    model, calls = serve(HELLO)
    events = await run(model, chat())
    assert deltas(events) == list("hello world")
    assert finished(events) == Finished("stop", len(PROMPT), 11)
    assert calls.aborted == []  # a request that ended on its own is not aborted afterwards


async def test_max_tokens_is_a_length_finish(serve: Serve) -> None:
    model, _ = serve(HELLO)
    events = await run(model, chat(max_tokens=3))
    assert "".join(deltas(events)) == "hel"
    assert finished(events) == Finished("length", len(PROMPT), 3)


async def test_a_stop_string_is_cut_and_reported(serve: Serve) -> None:
    model, _ = serve(HELLO)
    events = await run(model, chat(stop=["lo w"]))
    assert "".join(deltas(events)) == "hel"  # "lo" was held back by vLLM, never sent
    assert finished(events) == Finished("stop", len(PROMPT), len("hello w"), "lo w")


async def test_cancel_aborts_the_request(serve: Serve) -> None:
    model, calls = serve([*ids("a" * 500), EOS])
    cancel = threading.Event()
    calls.on_token = lambda n: cancel.set() if n == 3 else None
    events = await run(model, chat(), cancel=cancel)
    [(_, _, request_id)] = calls.generate
    assert calls.aborted[0] == (request_id, False)
    assert calls.produced == 3
    assert "".join(deltas(events)) == "aaa"
    assert finished(events) == Finished("cancelled", len(PROMPT), 3)
    assert model.busy_slots == 0


async def test_a_consumer_that_leaves_aborts_the_request(serve: Serve) -> None:
    model, calls = serve([*ids("a" * 500), EOS])
    gate = threading.Event()  # vLLM's loop waits before its 2nd token until the test says
    calls.on_token = lambda n: gate.wait(timeout=30) if n == 2 else None
    cancel = threading.Event()
    stream = model.generate(chat(), 8192, cancel)
    async for event in stream:
        if isinstance(event, TextDelta):
            assert model.busy_slots == 1
            break
    await stream.aclose()
    assert cancel.is_set() and model.busy_slots == 0
    gate.set()
    assert await asyncio.to_thread(calls.aborted_event.wait, 30)
    [(_, _, request_id)] = calls.generate
    # Aborted by the adapter (it saw cancel) or by AsyncLLM.generate as its task was cancelled.
    assert calls.aborted and {rid for rid, _ in calls.aborted} == {request_id}
    assert calls.produced <= 2  # stopped within a token of the consumer leaving


async def test_json_schema_is_a_structured_output(serve: Serve) -> None:
    model, calls = serve(HELLO)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    await run(model, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema}}))
    await run(model, chat(response_format={"type": "json_object"}))
    first, second = (params.structured_outputs for _, params, _ in calls.generate)
    assert first == vllm_standin.StructuredOutputsParams(json=schema)
    assert second == vllm_standin.StructuredOutputsParams(json_object=True)


async def test_a_forced_tool_call_is_constrained_to_the_call_schema(serve: Serve) -> None:
    model, calls = serve(HELLO)
    request = chat(tools=[TOOL], tool_choice="required")
    await run(model, request)
    [(prompt, params, _)] = calls.generate
    expected = json.loads(call_schema(allowed(request.tools, request.tool_choice)))
    assert params.structured_outputs == vllm_standin.StructuredOutputsParams(json=expected)
    assert prompt["prompt_token_ids"][:len(ids("<system>You can call"))] == ids("<system>You can call")


async def test_auto_tools_are_offered_in_the_prompt_only(serve: Serve) -> None:
    model, calls = serve(HELLO)
    await run(model, chat(tools=[TOOL], tool_choice="auto"))
    [(prompt, params, _)] = calls.generate
    assert params.structured_outputs is None
    rendered = "".join(chr(t - 8) for t in prompt["prompt_token_ids"])
    assert rendered.startswith("<system>You can call these functions:") and "weather" in rendered


async def test_a_refusal_by_vllm_is_a_400_without_its_words(serve: Serve) -> None:
    model, calls = serve(HELLO)
    calls.refuse = True
    with pytest.raises(InvalidRequest) as caught:
        await run(model, chat())
    assert "secret" not in caught.value.message and "xgrammar" not in caught.value.message
    assert model.busy_slots == 0


async def test_logprobs_are_refused(serve: Serve) -> None:
    model, calls = serve(HELLO)
    with pytest.raises(InvalidRequest) as caught:
        await run(model, chat(logprobs=True))
    assert (caught.value.param, caught.value.code) == ("logprobs", "unsupported_parameter")
    assert calls.generate == []


async def test_too_long_a_prompt_is_refused_before_generating(serve: Serve) -> None:
    model, calls = serve(HELLO, context_length=10)
    with pytest.raises(InvalidRequest) as caught:
        await run(model, chat(messages=[{"role": "user", "content": "x" * 20}]))
    assert caught.value.code == "context_length_exceeded"
    assert calls.generate == []


async def test_text_completions_get_a_bos(serve: Serve) -> None:
    model, calls = serve(HELLO)
    await run(model, parse_completion({"model": "tiny-hf", "prompt": "Once", "max_tokens": 5}))
    assert calls.generate[0][0]["prompt_token_ids"] == [BOS, *ids("Once")]


async def test_one_accounts_requests_share_a_cache_salt(serve: Serve) -> None:
    """vLLM reuses prefixes only between prompts with the same salt: the account's scope."""
    model, calls = serve(HELLO)
    for scope in ("scope-a", "scope-a", "scope-b"):
        [_ async for _ in model.generate(chat(), 50, threading.Event(), scope)]
    assert [p["cache_salt"] for p, _, _ in calls.generate] == ["scope-a", "scope-a", "scope-b"]


async def test_requests_share_the_batch(serve: Serve) -> None:
    model, calls = serve(HELLO, slots=2)
    results = await asyncio.gather(run(model, chat()), run(model, chat(max_tokens=4)))
    assert ["".join(deltas(r)) for r in results] == ["hello world", "hell"]
    assert len(calls.generate) == 2
    assert model.busy_slots == 0


def test_close_shuts_the_engine_down(serve: Serve) -> None:
    model, calls = serve(HELLO)
    model.close()
    assert calls.shutdown
    assert not model._thread.is_alive()


def test_a_missing_directory_is_not_a_hub_name(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    calls = vllm_standin.install(monkeypatch, HELLO)
    with pytest.raises(FileNotFoundError):
        VllmBackend().load(local(tmp_path / "gone"), slots=1, threads=None)
    assert calls.args == []


def test_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(vllm_engine, "NVIDIA_DEVICE", tmp_path / "nvidia0")
    monkeypatch.setattr(vllm_engine.shutil, "which", lambda name: None)
    problem = VllmBackend().problem()
    assert problem is not None and "NVIDIA GPU" in problem and "\n" not in problem
    (tmp_path / "nvidia0").touch()
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    assert VllmBackend().problem() == "vLLM is not installed: pip install 'darkbloom[vllm]'"
    vllm_standin.install(monkeypatch, HELLO)
    assert VllmBackend().problem() is None


async def test_the_gpu_check_script_runs_the_adapter(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """bench/vllm_check.py, against the stand-in here, so it works when a GPU machine runs it."""
    from bench import vllm_check

    calls = vllm_standin.install(monkeypatch, [*ids("the sea " * 40), EOS])
    monkeypatch.setattr(VllmBackend, "problem", lambda self: None)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    result = await vllm_check.check(vllm_check.local_model(tmp_path), VllmBackend(), max_tokens=16)
    assert result["ok"] and result["engine"] == "vllm"
    assert (result["completion_tokens"], result["finish_reason"]) == (16, "length")
    assert [params.max_tokens for _, params, _ in calls.generate] == [8, 16]  # warm-up, then it
    assert calls.shutdown
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Benchmarks\n\n{vllm_check.MARK_START}\nnot run\n{vllm_check.MARK_END}\n\ntail\n")
    vllm_check.record(result, doc)
    text = doc.read_text()
    assert "not run" not in text and "| decode_tps |" in text and text.endswith("\n\ntail\n")


def test_the_gpu_check_script_says_what_is_missing(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from bench import vllm_check

    assert vllm_check.main(["--model", str(tmp_path / "none")]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "ok": False, "error": f"no model directory at {tmp_path / 'none'}: pass --model DIR"}
