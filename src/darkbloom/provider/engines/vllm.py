"""vLLM engine: safetensors (Hugging Face) models on NVIDIA GPUs, batched continuously.

Written against vLLM 0.33's V1 async API: ``AsyncLLM.from_engine_args(AsyncEngineArgs(...))``,
``generate(prompt, sampling_params, request_id)`` (an async iterator of cumulative
``RequestOutput``s), ``abort(request_id)``, ``get_tokenizer()``, ``shutdown()``; and
``SamplingParams`` / ``StructuredOutputsParams`` from ``vllm.sampling_params``. Nothing of vLLM is
imported until a model loads, so this module imports on any machine.

vLLM runs on its own event loop in its own thread. Its output handler detokenizes on the loop it
runs on, and its sockets belong to the loop that first used them, so keeping it off the agent's
loop means a busy batch never stalls the agent (heartbeats, other models) and loading (minutes,
blocking) can happen from any thread. Events cross back as in llamacpp.py.

The prompt is the token ids our chat template rendering gives (hf_prompt.py), passed as a tokens
prompt so vLLM evaluates exactly what ``count_tokens`` counted. Only text deltas leave here (the
cumulative text, diffed); usage is exact, from the token id counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from darkbloom.errors import InvalidRequest
from darkbloom.inference.budget import output_budget
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import allowed, call_schema
from darkbloom.provider.engines.base import (
    Finished,
    GenerationEvent,
    LocalModel,
    ModelFormat,
    Started,
    TextDelta,
)
from darkbloom.provider.engines.hf_model import HfModel
from darkbloom.provider.engines.hf_prompt import HfPrompts
from darkbloom.provider.engines.relay import EventRelay

# vLLM's structured outputs give JSON schemas and forced tool calls; it samples with a per-request
# seed and matches stop strings itself. Its logprobs carry each token's text but not its bytes,
# which the API's logprobs need exactly, so logprobs are not offered.
CAPABILITIES = frozenset({"tools", "json_schema", "seed", "stop_sequences", "completions"})
NVIDIA_DEVICE = Path("/dev/nvidia0")

T = TypeVar("T")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is not a package, or a spec-less module
        return name in sys.modules


def _has_nvidia_gpu() -> bool:
    return NVIDIA_DEVICE.exists() or shutil.which("nvidia-smi") is not None


class VllmBackend:
    name = "vllm"
    formats: frozenset[ModelFormat] = frozenset({"safetensors"})

    def __init__(self, *, gpu_memory_utilization: float = 0.9) -> None:
        self.gpu_memory_utilization = gpu_memory_utilization

    def problem(self) -> str | None:
        if not _has_nvidia_gpu():
            return ("vLLM needs an NVIDIA GPU and none was found (no /dev/nvidia0, no nvidia-smi): "
                    "serve a GGUF model with llama.cpp instead")
        if not _importable("vllm"):
            return "vLLM is not installed: pip install 'darkbloom[vllm]'"
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> VllmModel:
        return VllmModel(model, slots=slots, gpu_memory_utilization=self.gpu_memory_utilization)


def structured_outputs(request: GenerationRequest) -> dict[str, Any] | None:
    """StructuredOutputsParams' arguments for the request, chosen as grammar.py's ``grammar_for``
    chooses: a forced tool call wins over a response format."""
    if request.tool_choice.mode == "required":
        return {"json": json.loads(call_schema(allowed(request.tools, request.tool_choice)))}
    fmt = request.response_format
    if fmt is None:
        return None
    if fmt.kind == "json_object" or fmt.schema is None:
        return {"json_object": True}
    return {"json": json.loads(fmt.schema)}


def _refused(exc: BaseException) -> bool:
    """vLLM's own request validation failures (VLLMValidationError is a ValueError; newer releases
    also root it in VLLMClientError)."""
    return isinstance(exc, ValueError) or any(c.__name__ == "VLLMClientError"
                                              for c in type(exc).__mro__)


class VllmModel(HfModel):
    """One model resident in a vLLM engine, serving up to ``slots`` requests in one batch."""

    capabilities = CAPABILITIES

    def __init__(self, model: LocalModel, *, slots: int, gpu_memory_utilization: float) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if not model.path.is_dir():  # vLLM would take a missing path for a Hub repo name
            raise FileNotFoundError(f"safetensors model directory not found: {model.path}")
        self.model = model
        self._init_slots(slots)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"vllm-{model.id}",
                                        daemon=True)
        self._thread.start()
        self._engine: Any = None
        try:
            self._engine = self._on_engine_loop(self._start(gpu_memory_utilization)).result()
            self._prompts = HfPrompts(self._engine.get_tokenizer())
        except BaseException:
            self.close()
            raise

    async def _start(self, gpu_memory_utilization: float) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(self.model.path),
            max_model_len=self.model.context_length,
            max_num_seqs=self._slots,
            gpu_memory_utilization=gpu_memory_utilization,
            disable_log_stats=True,
            enable_log_requests=False,  # request logs would carry prompts
        )
        return AsyncLLM.from_engine_args(args)

    def _on_engine_loop(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _stream(self, request: GenerationRequest, max_tokens_cap: int,
                      cancel: threading.Event, cache_scope: str | None
                      ) -> AsyncGenerator[GenerationEvent]:
        relay = EventRelay()

        async def drive() -> None:
            try:
                await self._run(request, max_tokens_cap, cancel, cache_scope, relay.emit)
            except asyncio.CancelledError:
                raise  # the consumer left; vLLM's generate aborts the request on its way out
            except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                relay.emit(exc)

        running = self._on_engine_loop(drive())
        try:
            async for event in relay.events():
                yield event
        finally:
            cancel.set()
            running.cancel()  # no-op once finished; otherwise stops (and aborts) it now

    async def _run(self, request: GenerationRequest, max_tokens_cap: int, cancel: threading.Event,
                   cache_scope: str | None,
                   emit: Callable[[GenerationEvent], None]) -> None:
        """On vLLM's loop: one request, from prompt to Finished."""
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams

        prompt = self._prompts.tokens(request)
        limit = min(max_tokens_cap,
                    output_budget(request, len(prompt), self.model.context_length, max_tokens_cap))
        sampling = request.sampling
        structured = structured_outputs(request)
        params = SamplingParams(
            max_tokens=limit,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            seed=sampling.seed,
            stop=list(request.stop) or None,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            structured_outputs=(StructuredOutputsParams(**structured)
                                if structured is not None else None),
        )
        request_id = uuid.uuid4().hex
        # A tokens prompt (vllm.inputs.TokensPrompt, a TypedDict): vLLM does not re-tokenize.
        # vLLM caches prefixes across all requests; its cache salt keeps one account's prefixes
        # from serving (or time-probing) another's, and no scope means no reuse at all.
        salt = cache_scope if cache_scope is not None else request_id
        outputs = self._engine.generate({"prompt_token_ids": prompt, "cache_salt": salt}, params,
                                        request_id)
        sent = ""
        started = False
        completion = 0
        try:
            while True:
                if cancel.is_set():
                    await self._engine.abort(request_id)
                    emit(Finished("cancelled", len(prompt), completion))
                    return
                try:
                    out = await outputs.__anext__()
                except StopAsyncIteration:
                    raise RuntimeError("vLLM ended the request without a final output") from None
                except Exception as exc:
                    if not started and _refused(exc):
                        # vLLM's message can quote the request (a schema, say): keep to its kind.
                        raise InvalidRequest(f"the engine refused this request "
                                             f"({type(exc).__name__})") from None
                    raise
                if not started:
                    started = True
                    emit(Started(len(out.prompt_token_ids)))
                result = out.outputs[0]
                completion = len(result.token_ids)
                text = result.text
                if len(text) > len(sent) and text.startswith(sent):
                    emit(TextDelta(text[len(sent):]))
                    sent = text
                if out.finished:
                    emit(self._finished(result, len(out.prompt_token_ids)))
                    # Let generate() end on its own: closed while suspended, it would send vLLM
                    # an abort for a request that is already over.
                    await anext(outputs, None)
                    return
        finally:
            await outputs.aclose()

    @staticmethod
    def _finished(result: Any, prompt_tokens: int) -> Finished:
        completion = len(result.token_ids)
        reason = result.finish_reason
        stop = result.stop_reason
        if reason == "stop":
            if isinstance(stop, str):  # one of the request's stop strings (cut from the text)
                return Finished("stop", prompt_tokens, completion, stop)
            # End of sequence (or a stop token id): that last token is not part of the
            # completion, as on llama.cpp and mlx-lm.
            return Finished("stop", prompt_tokens, max(completion - 1, 0))
        if reason == "length":
            return Finished("length", prompt_tokens, completion)
        if reason == "abort":
            return Finished("cancelled", prompt_tokens, completion)
        raise RuntimeError(f"vLLM finished the request with {reason!r}")

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and self._loop.is_running():
            async def shutdown() -> None:
                engine.shutdown()

            self._on_engine_loop(shutdown()).result(timeout=60)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
