"""llama.cpp engine (llama-cpp-python): one llama context per slot, each with its own thread.

Runs anywhere (CPU; Metal or CUDA where the wheel was built with them) and loads GGUF files.

Each slot keeps one long-lived worker thread: llama.cpp's OpenMP thread team belongs to the thread
that drives it, and a fresh thread per request (or asyncio.to_thread) decoded 15-65% slower here
while the old team spun (see docs/BENCHMARKS.md).

Determinism: every request starts from an empty KV cache (``reset()``), because llama.cpp's
prompt-prefix reuse evaluates the suffix in a different batch shape and can change greedy output.
Prefill is re-done per request; for the prompt sizes this model serves that costs milliseconds.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import logging
import os
import queue
import random
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from darkbloom.inference.budget import output_budget
from darkbloom.inference.formatting import TokenLogprob
from darkbloom.inference.grammar import grammar_for
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest
from darkbloom.provider.engines.base import (
    CAPABILITIES,
    Finished,
    FinishReason,
    GenerationEvent,
    LocalModel,
    ModelFormat,
    Started,
    TextDelta,
)
from darkbloom.provider.engines.relay import EventRelay
from darkbloom.provider.engines.stops import StopMatcher
from darkbloom.provider.fingerprint import template_hash

log = logging.getLogger(__name__)


class _Slot:
    def __init__(self, llama: Any, index: int) -> None:
        import llama_cpp

        self.llama = llama
        self.prompts = PromptBuilder(llama)
        self._vocab = llama._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"llama-slot-{index}", daemon=True)
        self._thread.start()

    def is_eog(self, token: int) -> bool:
        return bool(self._is_eog(self._vocab, token))

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)
        self.llama.close()


class TokenText:
    """Token bytes to text, incrementally. Invalid bytes mid-stream become U+FFFD, but the
    incomplete character a ``max_tokens`` cut can leave at the end is dropped, never replaced:
    it is not text, and a client would see a character the model never wrote."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)  # an incomplete tail waits for the next piece

    def finish(self) -> str:
        self._decoder.reset()  # what is still buffered can only be an incomplete character
        return ""


def piece_text(piece: bytes) -> str:
    """One token's text for logprobs, as OpenAI gives it: what decodes, plus ``\\xNN`` for the
    bytes of a partial character (the exact bytes travel in ``bytes``)."""
    return piece.decode("utf-8", "backslashreplace")


class _Scorer:
    """Log probabilities from the logits the sampler just used (the raw model distribution)."""

    def __init__(self, llama: Any) -> None:
        import llama_cpp
        import numpy

        self._np = numpy
        self._llama = llama
        self._logits = llama_cpp.llama_get_logits_ith
        self._n_vocab = llama.n_vocab()

    def _text(self, token: int) -> tuple[str, tuple[int, ...]]:
        raw = bytes(self._llama.detokenize([token]))
        return piece_text(raw), tuple(raw)

    def score(self, token: int, piece: bytes, top: int) -> TokenLogprob:
        np = self._np
        row = np.ctypeslib.as_array(self._logits(self._llama._ctx.ctx, -1), shape=(self._n_vocab,))
        peak = float(row.max())
        logprobs = row - (peak + float(np.log(np.exp(row - peak).sum())))
        best: list[tuple[str, float, tuple[int, ...]]] = []
        if top:
            ids = np.argpartition(logprobs, -top)[-top:]
            for alt in sorted(ids.tolist(), key=lambda i: -float(logprobs[i])):
                text, raw = self._text(alt)
                best.append((text, float(logprobs[alt]), raw))
        return TokenLogprob(piece_text(piece), float(logprobs[token]), tuple(piece),
                            tuple(best))


class LlamaCppBackend:
    name = "llama.cpp"
    formats: frozenset[ModelFormat] = frozenset({"gguf"})

    def problem(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed (run scripts/bootstrap.sh, or pip install it)"
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> LlamaCppModel:
        return LlamaCppModel(model, slots=slots, threads=threads)


class LlamaCppModel:
    """One GGUF model resident in llama.cpp, ``slots`` contexts of it."""

    capabilities = CAPABILITIES  # grammars give tools and JSON schemas; logits give logprobs

    def __init__(self, model: LocalModel, *, slots: int = 1, threads: int | None = None) -> None:
        from llama_cpp import Llama

        self.model = model
        cores = os.cpu_count() or 1
        per_slot = threads or max(1, cores // slots)
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        self._all: list[_Slot] = []
        try:
            for index in range(slots):
                llama = Llama(model_path=str(model.path), n_ctx=model.context_length,
                              n_threads=per_slot, n_threads_batch=per_slot, n_batch=512,
                              verbose=False)
                slot = _Slot(llama, index)
                self._all.append(slot)
                self._free.put_nowait(slot)
        except BaseException:
            self.close()
            raise

    @property
    def slots(self) -> int:
        return len(self._all)

    @property
    def busy_slots(self) -> int:
        return len(self._all) - self._free.qsize()

    @property
    def template_hash(self) -> str:
        """The chat template this model renders with, hashed for the runtime manifest."""
        return template_hash(self._all[0].prompts.template_source)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._all[0].prompts.tokens(request))

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event) -> AsyncIterator[GenerationEvent]:
        slot = await self._free.get()
        loop = asyncio.get_running_loop()
        relay = EventRelay()
        job_done = loop.create_future()

        def job() -> None:
            try:
                self._run(slot, request, max_tokens_cap, cancel, relay.emit)
            except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                relay.emit(exc)
            finally:
                relay.call(job_done.set_result, None)

        slot.submit(job)
        try:
            async for event in relay.events():
                yield event
        finally:
            cancel.set()  # consumer of this iterator left early: stop the thread at the next token
            # The slot is free again once its thread is idle, however this coroutine ends.
            job_done.add_done_callback(lambda _: self._free.put_nowait(slot))

    def _run(self, slot: _Slot, request: GenerationRequest, max_tokens_cap: int,
             cancel: threading.Event, emit: Any) -> None:
        llama = slot.llama
        prompt = slot.prompts.tokens(request)
        limit = min(max_tokens_cap,
                    output_budget(request, len(prompt), self.model.context_length, max_tokens_cap))
        sampling = request.sampling
        emit(Started(len(prompt)))
        llama.reset()
        llama.set_seed(sampling.seed % 2**32 if sampling.seed is not None
                       else random.randrange(2**32))
        decoder = TokenText()
        stops = StopMatcher(request.stop)
        scorer = _Scorer(llama) if request.logprobs is not None else None
        scored: list[TokenLogprob] = []  # waiting for their text to be emitted
        completion = 0
        matched = False
        finish: FinishReason = "length"
        grammar = None
        if (text := grammar_for(request)) is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            grammar = LlamaGrammar.from_string(text, verbose=False)
        generator = llama.generate(
            prompt, grammar=grammar, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=sampling.repetition_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
        )
        try:
            while completion < limit:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                token = next(generator)
                if slot.is_eog(token):
                    finish = "stop"
                    break
                completion += 1
                piece = bytes(llama.detokenize([token]))
                if scorer is not None:
                    scored.append(scorer.score(token, piece, request.logprobs or 0))
                text = decoder.feed(piece)
                safe, stopped = stops.feed(text)
                if safe:
                    emit(TextDelta(safe, tuple(scored)))
                    scored.clear()
                if stopped:
                    finish, matched = "stop", True
                    break
            else:
                if cancel.is_set():
                    finish = "cancelled"
        finally:
            generator.close()
        if not matched and finish != "cancelled":
            tail, _ = stops.feed(decoder.finish())
            tail += stops.flush()
            if tail or scored:  # a dropped partial character leaves logprobs and no text
                emit(TextDelta(tail, tuple(scored)))
        emit(Finished(finish, len(prompt), completion, stops.matched))

    def close(self) -> None:
        for slot in self._all:
            slot.close()
        self._all.clear()
