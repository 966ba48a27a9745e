"""A stand-in for vLLM 0.33's V1 async API, installed into sys.modules by tests.

Signatures are the library's (file and function cited at each), keyword-only where it is, so an
adapter call with a wrong or unknown name fails as it would on vLLM. The engine behaves as vLLM's
documents say: outputs are cumulative (RequestOutputKind.CUMULATIVE, the default); the EOS token
is in ``token_ids`` but not in ``text`` and finishes with "stop" and stop_reason None; a stop
string is cut from the text, finishes with "stop" and stop_reason = the string, and text that could
be the start of one is held back until it is not; ``max_tokens`` finishes with "length". Leaving
``generate`` early (cancelled, closed) aborts the request, as AsyncLLM.generate does.

The model is a script of token ids; the tokenizer is one character per token (id = code point + 8,
BOS 1, EOS 2).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.machinery
import sys
import threading
import types
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

BOS, EOS, OFFSET = 1, 2, 8
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def ids(text: str) -> list[int]:
    return [ord(c) + OFFSET for c in text]


class VLLMValidationError(ValueError):
    """vllm/exceptions.py VLLMValidationError(message, *, parameter=None, value=None)."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


# vllm/sampling_params.py StructuredOutputsParams (a pydantic dataclass): exactly one constraint.
@dataclass
class StructuredOutputsParams:
    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        count = sum(getattr(self, f) is not None
                    for f in ("json", "regex", "choice", "grammar", "json_object", "structural_tag"))
        if count != 1:
            raise VLLMValidationError("You must use exactly one kind of structured outputs constraint")


class SamplingParams:
    """vllm/sampling_params.py SamplingParams (a msgspec.Struct): these fields, these defaults."""

    FIELDS: dict[str, Any] = {  # noqa: RUF012
        "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None, "stop": None,
        "stop_token_ids": None, "ignore_eos": False, "max_tokens": 16, "min_tokens": 0,
        "logprobs": None, "prompt_logprobs": None, "detokenize": True, "skip_special_tokens": True,
        "spaces_between_special_tokens": True, "include_stop_str_in_output": False,
        "output_kind": "CUMULATIVE", "structured_outputs": None, "logit_bias": None,
        "allowed_token_ids": None, "extra_args": None, "bad_words": None,
    }

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"Unexpected keyword arguments {sorted(unknown)}")
        self.given = dict(kwargs)
        for name, default in self.FIELDS.items():
            setattr(self, name, kwargs.get(name, default))


@dataclass
class CompletionOutput:
    """vllm/outputs.py CompletionOutput."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    """vllm/outputs.py RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs,
    outputs, finished, ...)."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                 prompt_logprobs: Any, outputs: list[CompletionOutput], finished: bool) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished


# vllm/engine/arg_utils.py AsyncEngineArgs(EngineArgs), dataclasses: the fields the adapter may set.
@dataclass
class AsyncEngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    disable_log_stats: bool = False
    enable_log_requests: bool = False


class Tokenizer:
    """The Hugging Face tokenizer methods the adapter uses, as vLLM's get_tokenizer() returns."""

    def __init__(self, engine: AsyncLLM) -> None:
        self._engine = engine
        self.chat_template = TEMPLATE

    # transformers apply_chat_template(conversation, tools=None, documents=None, chat_template=None,
    # add_generation_prompt=False, continue_final_message=False, tokenize=True, ..., **kwargs)
    def apply_chat_template(self, conversation: list[dict[str, str]], tools: Any = None,
                            documents: Any = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = True,
                            **kwargs: Any) -> Any:
        self._engine.calls.templates.append({"tokenize": tokenize, "chat_template": chat_template,
                                             "add_generation_prompt": add_generation_prompt})
        text = ImmutableSandboxedEnvironment().from_string(chat_template or self.chat_template).render(
            messages=conversation, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # transformers PreTrainedTokenizerBase.encode(text, text_pair=None, add_special_tokens=True, ...)
    def encode(self, text: str, text_pair: Any = None, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + ids(text)


@dataclass
class Calls:
    args: list[AsyncEngineArgs] = field(default_factory=list)
    generate: list[tuple[Any, SamplingParams, str]] = field(default_factory=list)
    aborted: list[tuple[str, bool]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    produced: int = 0
    shutdown: bool = False
    aborted_event: threading.Event = field(default_factory=threading.Event)
    on_token: Callable[[int], None] | None = None  # called before the n-th token is produced
    refuse: bool = False  # generate raises VLLMValidationError (as for a schema it cannot enforce)


class AsyncLLM:
    script: list[int] = []  # noqa: RUF012
    calls: Calls

    # vllm/v1/engine/async_llm.py AsyncLLM.from_engine_args(cls, engine_args, start_engine_loop=True,
    # usage_context=UsageContext.ENGINE_CONTEXT, stat_loggers=None)
    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True,
                         usage_context: Any = None, stat_loggers: Any = None) -> AsyncLLM:
        assert isinstance(engine_args, AsyncEngineArgs)
        asyncio.get_running_loop()  # the adapter builds it on the loop it will run on
        cls.calls.args.append(engine_args)
        return cls()

    # AsyncLLM.get_tokenizer(self) -> TokenizerLike
    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer(self)

    # AsyncLLM.abort(self, request_id: str | Iterable[str], internal: bool = False)
    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        assert isinstance(request_id, str)
        self.calls.aborted.append((request_id, internal))
        self.calls.aborted_event.set()

    # AsyncLLM.shutdown(self, timeout=None)
    def shutdown(self, timeout: float | None = None) -> None:
        self.calls.shutdown = True

    # AsyncLLM.generate(self, prompt, sampling_params, request_id, *, prompt_text=None,
    # lora_request=None, tokenization_kwargs=None, trace_headers=None, priority=0,
    # data_parallel_rank=None, session_id=None, reasoning_ended=None, reasoning_parser_kwargs=None)
    async def generate(self, prompt: Any, sampling_params: SamplingParams, request_id: str, *,
                       prompt_text: str | None = None, lora_request: Any = None,
                       tokenization_kwargs: Any = None, trace_headers: Any = None,
                       priority: int = 0, data_parallel_rank: int | None = None,
                       session_id: str | None = None, reasoning_ended: bool | None = None,
                       reasoning_parser_kwargs: Any = None) -> AsyncGenerator[RequestOutput]:
        assert isinstance(sampling_params, SamplingParams) and isinstance(request_id, str)
        self.calls.generate.append((prompt, sampling_params, request_id))
        if self.calls.refuse:
            raise VLLMValidationError("The provided JSON schema contains features not supported "
                                      "by xgrammar: {\"secret\": true}", parameter="json")
        tokens = list(prompt["prompt_token_ids"])
        stops = [sampling_params.stop] if isinstance(sampling_params.stop, str) else (
            sampling_params.stop or [])
        hold = max((len(s) for s in stops), default=1) - 1  # vLLM's stop buffer length
        out: list[int] = []
        try:
            for token in self.script:
                self.calls.produced += 1
                if self.calls.on_token is not None:
                    self.calls.on_token(self.calls.produced)
                await asyncio.sleep(0)
                out.append(token)
                text = "".join(chr(t - OFFSET) for t in out if t != EOS)
                finish: str | None = None
                stop_reason: str | None = None
                hits = [(i, s) for s in stops if (i := text.find(s)) >= 0]
                if hits:
                    index, stop_reason = min(hits)
                    text, finish = text[:index], "stop"
                elif token == EOS:
                    finish = "stop"
                elif len(out) == sampling_params.max_tokens:
                    finish = "length"
                shown = text if finish or not hold else text[:max(len(text) - hold, 0)]
                yield RequestOutput(request_id, None, tokens, None, [CompletionOutput(
                    0, shown, list(out), None, None, finish_reason=finish, stop_reason=stop_reason)],
                    finish is not None)
                if finish:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id, internal=True)
            raise


def install(monkeypatch: pytest.MonkeyPatch, script: list[int]) -> Calls:
    """Put the vllm package stand-ins into sys.modules; returns what the engine is asked."""
    calls = Calls()
    engine = type("AsyncLLM", (AsyncLLM,), {"script": script, "calls": calls})
    modules = {
        "vllm": _module("vllm", package=True),
        "vllm.engine": _module("vllm.engine", package=True),
        "vllm.engine.arg_utils": _module("vllm.engine.arg_utils", AsyncEngineArgs=AsyncEngineArgs),
        "vllm.v1": _module("vllm.v1", package=True),
        "vllm.v1.engine": _module("vllm.v1.engine", package=True),
        "vllm.v1.engine.async_llm": _module("vllm.v1.engine.async_llm", AsyncLLM=engine),
        "vllm.sampling_params": _module("vllm.sampling_params", SamplingParams=SamplingParams,
                                        StructuredOutputsParams=StructuredOutputsParams),
        "vllm.exceptions": _module("vllm.exceptions", VLLMValidationError=VLLMValidationError),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def engine_args(calls: Calls) -> dict[str, Any]:
    return dataclasses.asdict(calls.args[-1])


def _module(name: str, package: bool = False, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    for key, value in attrs.items():
        setattr(module, key, value)
    return module
