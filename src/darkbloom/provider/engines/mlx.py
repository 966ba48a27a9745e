"""mlx-lm engine: MLX-format models on Apple Silicon, one sequence at a time.

Written against mlx-lm 0.32 (``mlx_lm.load``, ``mlx_lm.stream_generate``,
``mlx_lm.sample_utils.make_sampler`` / ``make_logits_processors``); nothing of it is imported until
a model loads, so this module imports on any machine.

One slot: ``stream_generate`` decodes one sequence. It runs on one long-lived worker thread per
model, because mlx-lm's generation stream is thread-local (``mx.new_thread_local_stream``) and a
fresh thread per request would set up a new one each time. Events cross to the event loop as in
llamacpp.py; the loop checks ``cancel`` before pulling each token, so a cancel stops it within a
token, and closing the generator lets mlx-lm's ``wired_limit`` context synchronize and restore.

Capabilities are only what mlx-lm really does: it has no grammar-constrained sampling (so no
tools or JSON schemas) and its per-token log probabilities come after the logits processors, not
from the raw model distribution the API promises (so no logprobs). Stop sequences are matched
here on the streamed text (stops.py); a seed seeds MLX's global generator (``mx.random.seed``).
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import queue
import random
import sys
import threading
from collections.abc import AsyncGenerator, Callable

from darkbloom.inference.budget import output_budget
from darkbloom.inference.request import GenerationRequest
from darkbloom.provider.engines.base import (
    Finished,
    FinishReason,
    GenerationEvent,
    LocalModel,
    ModelFormat,
    Started,
    TextDelta,
)
from darkbloom.provider.engines.hf_model import HfModel
from darkbloom.provider.engines.hf_prompt import HfPrompts
from darkbloom.provider.engines.relay import EventRelay
from darkbloom.provider.engines.stops import StopMatcher

log = logging.getLogger(__name__)

CAPABILITIES = frozenset({"seed", "stop_sequences", "completions"})
# How many recent tokens the repetition penalties look at: llama-cpp-python's default
# (last_n_tokens_size), so a request is penalised alike on either engine (mlx-lm's own is 20).
PENALTY_CONTEXT = 64


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is not a package, or a spec-less module
        return name in sys.modules


class MlxBackend:
    name = "mlx-lm"
    formats: frozenset[ModelFormat] = frozenset({"mlx"})

    def problem(self) -> str | None:
        if sys.platform != "darwin" or platform.machine() != "arm64":
            return (f"mlx-lm needs a Mac with Apple Silicon (this machine is {platform.system()} "
                    f"{platform.machine()}): serve a GGUF model with llama.cpp instead")
        if not _importable("mlx_lm"):
            return "mlx-lm is not installed: pip install 'darkbloom[mlx]'"
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> MlxModel:
        if slots != 1:
            log.warning("mlx-lm runs one request at a time; serving %s with 1 slot, not %d",
                        model.id, slots)
        return MlxModel(model)


class MlxModel(HfModel):
    """One MLX model resident in memory, one slot."""

    capabilities = CAPABILITIES

    def __init__(self, model: LocalModel) -> None:
        import mlx_lm

        if not model.path.is_dir():  # mlx_lm.load would take a missing path for a Hub repo name
            raise FileNotFoundError(f"MLX model directory not found: {model.path}")
        self.model = model
        self._model, self._tokenizer = mlx_lm.load(str(model.path))
        self._prompts = HfPrompts(self._tokenizer)
        self._init_slots(1)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"mlx-{model.id}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def _stream(self, request: GenerationRequest, max_tokens_cap: int,
                      cancel: threading.Event, cache_scope: str | None
                      ) -> AsyncGenerator[GenerationEvent]:
        relay = EventRelay()

        def job() -> None:
            try:
                self._run(request, max_tokens_cap, cancel, relay.emit)
            except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                relay.emit(exc)

        # Jobs run in order on the one thread: a next request queued behind one that is being
        # cancelled starts once that one has stopped, at most a token later.
        self._jobs.put(job)
        try:
            async for event in relay.events():
                yield event
        finally:
            cancel.set()  # the consumer left early: stop the thread at the next token

    def _run(self, request: GenerationRequest, max_tokens_cap: int, cancel: threading.Event,
             emit: Callable[[GenerationEvent], None]) -> None:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        prompt = self._prompts.tokens(request)
        limit = min(max_tokens_cap,
                    output_budget(request, len(prompt), self.model.context_length, max_tokens_cap))
        emit(Started(len(prompt)))
        sampling = request.sampling
        # MLX's generator is global: seed it for every request, so a seeded request before this
        # one does not make an unseeded one repeat itself.
        mx.random.seed(sampling.seed % 2**64 if sampling.seed is not None else random.randrange(2**64))
        sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p,
                               min_p=sampling.min_p, top_k=sampling.top_k)
        processors = make_logits_processors(
            repetition_penalty=(None if sampling.repetition_penalty == 1.0
                                else sampling.repetition_penalty),
            repetition_context_size=PENALTY_CONTEXT,
            presence_penalty=sampling.presence_penalty or None,
            presence_context_size=PENALTY_CONTEXT,
            frequency_penalty=sampling.frequency_penalty or None,
            frequency_context_size=PENALTY_CONTEXT,
        )
        stops = StopMatcher(request.stop)
        completion = 0
        finish: FinishReason = "length"
        matched = False
        responses = stream_generate(self._model, self._tokenizer, prompt, max_tokens=limit,
                                    sampler=sampler, logits_processors=processors)
        try:
            while True:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                response = next(responses, None)
                if response is None:  # mlx-lm always ends on a response with a finish_reason
                    break
                # generation_tokens counts the token this response carries; on a "stop" that is
                # the end-of-sequence token, which is not part of the completion (as on llama.cpp).
                last = response.finish_reason is not None
                if last:
                    finish = "stop" if response.finish_reason == "stop" else "length"
                completion = response.generation_tokens - (1 if finish == "stop" and last else 0)
                safe, stopped = stops.feed(response.text)
                if safe:
                    emit(TextDelta(safe))
                if stopped:
                    finish, matched = "stop", True
                    break
                if last:
                    break
        finally:
            responses.close()
        if not matched and finish != "cancelled" and (tail := stops.flush()):
            emit(TextDelta(tail))
        emit(Finished(finish, len(prompt), completion, stops.matched))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
        del self._model, self._tokenizer  # the weights go when nothing else holds them
