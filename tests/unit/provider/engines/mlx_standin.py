"""A stand-in for mlx-lm 0.32 and ``mlx.core.random.seed``, installed into sys.modules by tests.

Each function keeps the library's signature exactly (file and function cited), so an adapter call
with a wrong name, a wrong kind of argument (keyword-only, positional) or a missing one fails as it
would against the real library. ``stream_generate`` follows the library's control flow: the
end-of-sequence token ends the loop without being detokenized, the ``max_tokens``-th token is, and a
last response carries ``finish_reason`` "stop" or "length" and ``generation_tokens`` = n + 1.

The model is a script of token ids; the tokenizer is one character per token (id = code point + 8,
BOS 1, EOS 2), its chat template rendered with jinja2's sandbox as Hugging Face's is.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

BOS, EOS, OFFSET = 1, 2, 8
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}"
            "{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def ids(text: str) -> list[int]:
    return [ord(c) + OFFSET for c in text]


def _raise(message: str) -> None:
    raise TemplateError(message)


@dataclass
class Calls:
    load: list[tuple[Any, ...]] = field(default_factory=list)
    sampler: list[dict[str, Any]] = field(default_factory=list)
    processors: list[dict[str, Any]] = field(default_factory=list)
    generate: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    pulled: int = 0  # tokens the model was asked for
    closed: bool = False  # stream_generate's generator was closed early
    on_token: Callable[[int], None] | None = None  # called before the n-th token is produced


class Tokenizer:
    """The parts of mlx_lm.tokenizer_utils.TokenizerWrapper (and the Hugging Face tokenizer it
    forwards to) that the adapter uses."""

    def __init__(self, calls: Calls, chat_template: str | None = TEMPLATE) -> None:
        self._calls = calls
        self.chat_template = chat_template
        self.eos_token_ids = {EOS}
        self._env = ImmutableSandboxedEnvironment()
        self._env.globals["raise_exception"] = _raise

    # mlx_lm/tokenizer_utils.py TokenizerWrapper.apply_chat_template(self, *args, tokenize=True,
    # **kwargs), forwarding to transformers' apply_chat_template(conversation, ..., chat_template=
    # None, add_generation_prompt=False, ..., tokenize=True, ...).
    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool = True,
                            add_generation_prompt: bool = False, chat_template: str | None = None,
                            **kwargs: Any) -> Any:
        self._calls.templates.append({"tokenize": tokenize,
                                      "add_generation_prompt": add_generation_prompt,
                                      "chat_template": chat_template, **kwargs})
        source = chat_template or self.chat_template
        if source is None:
            raise ValueError("Cannot use chat template functions because tokenizer.chat_template "
                             "is not set")
        text = self._env.from_string(source).render(messages=conversation,
                                                    add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # transformers PreTrainedTokenizerBase.encode(text, text_pair=None, add_special_tokens=True, ...)
    def encode(self, text: str, text_pair: Any = None, add_special_tokens: bool = True) -> list[int]:
        return ([BOS] if add_special_tokens else []) + ids(text)


@dataclass(frozen=True)
class GenerationResponse:
    """mlx_lm/generate.py GenerationResponse (the fields the adapter may read)."""

    text: str
    token: int
    logprobs: Any
    from_draft: bool
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: str | None = None


class Model:
    def __init__(self, script: list[int]) -> None:
        self.script = script


_GENERATE_STEP_KEYWORDS = frozenset({
    # mlx_lm/generate.py generate_step(prompt, model, *, max_tokens, sampler, logits_processors,
    # max_kv_size, prompt_cache, prefill_step_size, kv_bits, kv_group_size, quantized_kv_start,
    # prompt_progress_callback, input_embeddings): stream_generate passes **kwargs on to it.
    "max_tokens", "sampler", "logits_processors", "max_kv_size", "prompt_cache",
    "prefill_step_size", "kv_bits", "kv_group_size", "quantized_kv_start",
    "prompt_progress_callback", "input_embeddings",
})


def install(monkeypatch: pytest.MonkeyPatch, script: list[int],
            chat_template: str | None = TEMPLATE) -> Calls:
    """Put mlx, mlx.core, mlx_lm and mlx_lm.sample_utils stand-ins into sys.modules."""
    calls = Calls()

    # mlx_lm/utils.py load(path_or_hf_repo, tokenizer_config=None, model_config=None,
    # adapter_path=None, lazy=False, return_config=False, revision=None, trust_remote_code=False)
    def load(path_or_hf_repo: str, tokenizer_config: Any = None, model_config: Any = None,
             adapter_path: str | None = None, lazy: bool = False, return_config: bool = False,
             revision: str | None = None, trust_remote_code: bool = False) -> tuple[Any, ...]:
        assert isinstance(path_or_hf_repo, str)
        calls.load.append((path_or_hf_repo, tokenizer_config, model_config, adapter_path, lazy,
                           return_config, revision, trust_remote_code))
        return Model(script), Tokenizer(calls, chat_template)

    # mlx_lm/sample_utils.py make_sampler(temp=0.0, top_p=0.0, min_p=0.0, min_tokens_to_keep=1,
    # top_k=0, xtc_probability=0.0, xtc_threshold=0.1, xtc_special_tokens=[])
    def make_sampler(temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0,
                     min_tokens_to_keep: int = 1, top_k: int = 0, xtc_probability: float = 0.0,
                     xtc_threshold: float = 0.1, xtc_special_tokens: Any = ()) -> Any:
        args = {"temp": temp, "top_p": top_p, "min_p": min_p, "min_tokens_to_keep": min_tokens_to_keep,
                "top_k": top_k, "xtc_probability": xtc_probability, "xtc_threshold": xtc_threshold}
        calls.sampler.append(args)
        return ("sampler", len(calls.sampler))

    # mlx_lm/sample_utils.py make_logits_processors(logit_bias=None, repetition_penalty=None,
    # repetition_context_size=20, presence_penalty=None, presence_context_size=20,
    # frequency_penalty=None, frequency_context_size=20)
    def make_logits_processors(logit_bias: Any = None, repetition_penalty: float | None = None,
                               repetition_context_size: int | None = 20,
                               presence_penalty: float | None = None,
                               presence_context_size: int | None = 20,
                               frequency_penalty: float | None = None,
                               frequency_context_size: int | None = 20) -> list[Any]:
        calls.processors.append({
            "logit_bias": logit_bias, "repetition_penalty": repetition_penalty,
            "repetition_context_size": repetition_context_size,
            "presence_penalty": presence_penalty, "presence_context_size": presence_context_size,
            "frequency_penalty": frequency_penalty, "frequency_context_size": frequency_context_size,
        })
        return [("processor", name) for name, value in (
            ("repetition", repetition_penalty), ("presence", presence_penalty),
            ("frequency", frequency_penalty)) if value is not None and value != 0]

    # mlx_lm/generate.py stream_generate(model, tokenizer, prompt, max_tokens=256, draft_model=None,
    # **kwargs) -> Generator[GenerationResponse]
    def stream_generate(model: Model, tokenizer: Tokenizer, prompt: Any, max_tokens: int = 256,
                        draft_model: Any = None, **kwargs: Any) -> Generator[GenerationResponse]:
        unknown = set(kwargs) - _GENERATE_STEP_KEYWORDS
        if unknown:  # generate_step would raise this TypeError when the generator starts
            raise TypeError(f"generate_step() got unexpected keyword arguments {sorted(unknown)}")
        if isinstance(prompt, str):
            prompt = tokenizer.encode(prompt)
        prompt = list(prompt)
        calls.generate.append({"prompt": prompt, "max_tokens": max_tokens,
                               "draft_model": draft_model, **kwargs})
        return _stream(model, prompt, max_tokens)

    def _stream(model: Model, prompt: list[int], max_tokens: int) -> Generator[GenerationResponse]:
        def response(text: str, token: int, n: int, finish: str | None) -> GenerationResponse:
            return GenerationResponse(text, token, None, False, len(prompt), 1.0, n + 1, 1.0, 0.0,
                                      finish)

        token, n = EOS, -1
        try:
            for n, token in enumerate(model.script):
                if calls.on_token is not None:
                    calls.on_token(n + 1)
                calls.pulled += 1
                if token == EOS:
                    break
                text = chr(token - OFFSET)  # the detokenizer's segment for this token
                if n + 1 == max_tokens:
                    yield response(text, token, n, "length")
                    return
                yield response(text, token, n, None)
            yield response("", token, n, "stop" if token == EOS else "length")
        except GeneratorExit:
            calls.closed = True
            raise

    # mlx/core random.seed(seed: int) -> None (a uint64)
    def seed(seed: int) -> None:
        if not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise TypeError("seed(): incompatible function arguments (expects a uint64)")
        calls.seeds.append(seed)

    modules = {
        "mlx": _module("mlx", package=True),
        "mlx.core": _module("mlx.core", random=types.SimpleNamespace(seed=seed)),
        "mlx_lm": _module("mlx_lm", package=True, load=load, stream_generate=stream_generate),
        "mlx_lm.sample_utils": _module("mlx_lm.sample_utils", make_sampler=make_sampler,
                                       make_logits_processors=make_logits_processors),
    }
    modules["mlx"].core = modules["mlx.core"]  # type: ignore[attr-defined]
    modules["mlx_lm"].sample_utils = modules["mlx_lm.sample_utils"]  # type: ignore[attr-defined]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def _module(name: str, package: bool = False, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    for key, value in attrs.items():
        setattr(module, key, value)
    return module
