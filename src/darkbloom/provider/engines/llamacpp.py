"""llama.cpp engine (llama-cpp-python): continuous batching of every slot in one context.

As llama.cpp's own server does with ``--parallel N``: one context holds ``slots`` sequences and one
engine thread advances all of them with a single ``llama_decode`` per step, carrying the token each
generating sequence sampled last plus chunks of the prompts still being read. Weights are read once
per step whatever the number of sequences, so concurrent streams share the cost of a step.

One long-lived thread drives llama.cpp: its thread team belongs to the thread that drives it, and a
fresh thread per request (or asyncio.to_thread) decoded 15-65% slower here (docs/BENCHMARKS.md).
Events reach the agent's loop once per step for all sequences (one wake-up, not one per token).

KV: ``kv_unified=False``, so each sequence has its own KV stream of the model's full context: a
sequence attends only over its own cells, and its logits do not depend on what else is running.

Prefix cache: a finished sequence keeps its KV. A later request with the same cache scope (the
coordinator derives one per account, so one consumer can never time-probe another's prompts:
docs/security.md) reuses the longest common prefix and evaluates only the rest. Determinism at
temperature 0 is measured in docs/decisions.md ("Prefix cache").
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import itertools
import logging
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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

N_BATCH = 512  # tokens per llama_decode: the generating sequences' tokens, then prompt chunks
# A prompt is read in chunks of this many tokens counted from where its evaluation starts, never
# cut by how full a step is: the same request is evaluated the same way under any load.
PREFILL_CHUNK = 256
MAX_SLOTS = N_BATCH - PREFILL_CHUNK  # so a chunk always fits beside every generating sequence
# When the operator sets none. On the 2-core bench machine 8 streams give 1.33-1.37x one stream's
# tokens/s end to end, near llama.cpp's own 1.52x for 8 sequences per llama_decode on that model
# (docs/BENCHMARKS.md); more slots there would only lengthen each stream's steps.
DEFAULT_SLOTS = 8
KV_BUDGET = 2 * 2**30  # bytes of KV cache the default slot count may take
PENALTY_LAST_N = 64  # llama-cpp-python's default window for repetition penalties
PrefixReuse = Literal["off", "extend", "any"]
"""``extend``: reuse the common prefix when the new prompt goes beyond what the stream holds (a
conversation's next turn); an identical repeat keeps exactly what its first run kept, so it is
evaluated the same way and answers the same; any other prompt the cache covers starts clean.
``any``: every common prefix. ``off``: never (every request starts from an empty KV).
Why: a cache hit can change a greedy answer (docs/decisions.md "Prefix cache")."""


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


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Scorer:
    """Log probabilities from the logits the sampler just used (the raw model distribution)."""

    def __init__(self, model: Any, ctx: Any) -> None:
        import llama_cpp
        import numpy

        self._np = numpy
        self._model = model
        self._ctx = ctx
        self._logits = llama_cpp.llama_get_logits_ith
        self._n_vocab = model.n_vocab()

    def _text(self, token: int) -> tuple[str, tuple[int, ...]]:
        raw = bytes(self._model.detokenize([token]))
        return piece_text(raw), tuple(raw)

    def score(self, index: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        np = self._np
        row = np.ctypeslib.as_array(self._logits(self._ctx.ctx, index), shape=(self._n_vocab,))
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


@dataclass
class _Stream:
    """One KV stream of the context (a llama.cpp sequence id) and what its cells hold."""

    seq: int
    cached: list[int] = field(default_factory=list)  # the tokens whose KV the stream holds
    scope: str | None = None  # the cache scope of the request that left them
    prompt_len: int = 0  # that request's prompt, the first tokens of ``cached``...
    kept: int = 0  # ...of which its first ``kept`` were reused, the rest evaluated for it
    last_used: float = 0.0
    busy: bool = False

    def reusable(self, prompt: list[int], policy: PrefixReuse) -> int:
        """How many of ``prompt``'s first tokens can keep this stream's KV. At least the last
        prompt token is always evaluated: its logits give the first generated token."""
        if policy == "off" or not self.cached or not prompt:
            return 0
        shared = common_prefix(self.cached, prompt)
        if shared < len(prompt):
            # "extend": only a prompt that contains the stream's whole last prompt (its next
            # turn); one merely sharing a start with it (a system prompt) starts clean.
            return shared if policy == "any" or shared >= self.prompt_len else 0
        if policy == "any":
            return len(prompt) - 1
        # The prompt is all cached: an identical repeat is evaluated exactly as its first run
        # was; a shorter prompt (an earlier turn again) starts clean, as its first run may have.
        return self.kept if len(prompt) == self.prompt_len else 0


@dataclass
class _Job:
    """One request, from submission to its Finished event; touched only by the engine thread
    once submitted."""

    request: GenerationRequest
    cap: int
    cancel: threading.Event
    scope: str | None
    loop: asyncio.AbstractEventLoop  # the agent's loop the job's events are handed to
    emit: Callable[[GenerationEvent | BaseException], None]  # run on that loop
    done: Callable[[], None]
    stream: _Stream | None = None
    prompt: list[int] = field(default_factory=list)
    cached: int = 0  # prompt tokens whose KV the stream already held
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    turn: int = 0  # when it was admitted or last read a chunk: a ticket (round-robin order)
    limit: int = 0
    sampler: Any = None
    next_token: int | None = None  # sampled, to be evaluated in the next step
    completion: int = 0
    decoder: TokenText = field(default_factory=TokenText)
    stops: StopMatcher | None = None
    scorer: _Scorer | None = None
    scored: list[TokenLogprob] = field(default_factory=list)  # waiting for their text


class _Batcher:
    """The engine thread: admits submitted jobs into free streams, then steps every running job
    with one llama_decode until none is left, handing events to the loop once per step."""

    def __init__(self, model: Any, ctx: Any, prompts: PromptBuilder, context_length: int,
                 streams: int, reuse: PrefixReuse) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.model, self.ctx, self.prompts = model, ctx, prompts
        self.context_length = context_length
        self.reuse = reuse
        self._memory = llama_cpp.llama_get_memory(ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._streams = [_Stream(seq) for seq in range(streams)]
        self.steps = 0  # llama_decode calls: tokens per step is how full batches run
        self._tickets = itertools.count()  # prompt-reading turns, handed out in order
        self._running: list[_Job] = []
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._outbox: list[tuple[_Job, Callable[[Any], object], Any]] = []
        self._thread = threading.Thread(target=self._work, name="llama-batch", daemon=True)
        self._thread.start()

    # --- called on the agent's loop -------------------------------------------------------

    def submit(self, job: _Job) -> None:
        self._inbox.put(job)

    def close(self) -> bool:
        """Stop the thread; False if it is still inside a step after 10 s, when nothing it
        uses may be freed here (llama-cpp-python frees the context once the thread lets go of
        it; the batch leaks). Closing twice frees nothing twice."""
        if self._batch is None:
            return True
        self._inbox.put(None)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            log.error("llama.cpp engine thread did not stop within 10 s; not freeing its batch")
            return False
        self._llama_cpp.llama_batch_free(self._batch)
        self._batch = None
        return True

    # --- the engine thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                if self._turn():
                    return
            except Exception as exc:  # never let the thread die: every slot would hang
                log.error("llama.cpp engine step failed: %s", type(exc).__name__)
                for job in list(self._running):
                    self._fail(job, exc)
                self._hand_over()

    def _turn(self) -> bool:
        """Admit what waits, then one step; True once closed."""
        if not self._running:
            job = self._inbox.get()  # idle: sleep until a request comes
            if job is None:
                return True
            self._admit(job)
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if job is None:
                for running in self._running:
                    running.cancel.set()
                self._step()  # every job ends as cancelled; nobody waits forever
                self._hand_over()
                return True
            self._admit(job)
        if self._running:
            self._step()
        self._hand_over()
        return False

    def _hand_over(self) -> None:
        """One call_soon_threadsafe (one wake-up of the loop) for everything this step made."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[Any], object], Any]]] = {}
        for job, action, argument in self._outbox:
            by_loop.setdefault(job.loop, []).append((action, argument))
        self._outbox = []
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop closed while we wound down
                loop.call_soon_threadsafe(_deliver, items)

    def _admit(self, job: _Job) -> None:
        try:
            prompt = self.prompts.tokens(job.request)
            job.limit = min(job.cap, output_budget(job.request, len(prompt), self.context_length,
                                                   job.cap))
            job.sampler = self._sampler(job.request)
            job.stops = StopMatcher(job.request.stop)
            if job.request.logprobs is not None:
                job.scorer = _Scorer(self.model, self.ctx)
            stream = self._choose(job.scope, prompt)
        except Exception as exc:  # InvalidRequest before any event, as the contract says
            if job.sampler is not None:
                job.sampler.close()
            self._outbox.append((job, job.emit, exc))
            self._outbox.append((job, _call, job.done))
            return
        mine = job.scope is not None and stream.scope == job.scope
        keep = stream.reusable(prompt, self.reuse) if mine else 0
        if not self._llama_cpp.llama_memory_seq_rm(self._memory, stream.seq, keep, -1):
            # A memory that cannot cut a sequence partway (recurrent, sliding-window): clean.
            self._llama_cpp.llama_memory_seq_rm(self._memory, stream.seq, -1, -1)
            keep = 0
        del stream.cached[keep:]
        stream.busy, stream.scope, stream.prompt_len, stream.kept = True, job.scope, len(prompt), keep
        job.stream, job.prompt, job.pending, job.cached = stream, prompt, prompt[keep:], keep
        job.turn = next(self._tickets)
        self._outbox.append((job, job.emit, Started(len(prompt))))
        self._running.append(job)

    def _choose(self, scope: str | None, prompt: list[int]) -> _Stream:
        """The free stream whose cache serves this prompt best; else an empty one; else the
        least recently used. The caller never submits more jobs than there are streams."""
        free = [s for s in self._streams if not s.busy]
        if scope is not None and self.reuse != "off":
            mine = [(s.reusable(prompt, self.reuse), s) for s in free if s.scope == scope]
            best = max(mine, key=lambda pair: pair[0], default=(0, None))
            if best[0] > 0 and best[1] is not None:
                return best[1]
        return min(free, key=lambda s: (bool(s.cached), s.last_used))

    def _sampler(self, request: GenerationRequest) -> Any:
        """The sampler chain llama-cpp-python's Llama.generate builds, per sequence."""
        from llama_cpp.llama_grammar import LlamaGrammar

        sampling = request.sampling
        chain = _internals().LlamaSampler()
        chain.add_penalties(n_vocab=self.model.n_vocab(), penalty_last_n=PENALTY_LAST_N,
                            penalty_repeat=sampling.repetition_penalty,
                            penalty_freq=sampling.frequency_penalty,
                            penalty_present=sampling.presence_penalty)
        if (grammar := grammar_for(request)) is not None:
            chain.add_grammar(self.model, LlamaGrammar.from_string(grammar, verbose=False))
        if sampling.temperature == 0.0:
            chain.add_greedy()
        else:
            chain.add_top_k(sampling.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(sampling.top_p, 1)
            chain.add_min_p(sampling.min_p, 1)
            chain.add_temp(sampling.temperature)
            chain.add_dist(sampling.seed % 2**32 if sampling.seed is not None
                           else random.randrange(2**32))
        return chain

    def _step(self) -> None:
        """One llama_decode over every running job, then sampling for those that produced logits."""
        for job in [j for j in self._running if j.cancel.is_set()]:
            self._finish(job, "cancelled")
        if not self._running:
            return
        batch = self._batch
        batch.n_tokens = 0
        sampled: list[tuple[_Job, int]] = []
        for job in self._running:
            if job.next_token is not None:
                sampled.append((job, batch.n_tokens))
                self._add(job, job.next_token, logits=True)
                job.next_token = None
        room = N_BATCH - batch.n_tokens
        # Prompt chunks round-robin: the prompt that read (or was admitted) least recently goes
        # first, so a short prompt is not held behind the whole of a long one admitted before
        # it, nor a long one behind a stream of short ones admitted after it. The first in line
        # always fits (room >= N_BATCH - MAX_SLOTS = PREFILL_CHUNK).
        for job in sorted((j for j in self._running if j.pending), key=lambda j: j.turn):
            chunk = min(len(job.pending), PREFILL_CHUNK)
            if chunk > room:
                continue  # (a chunk that does not fit waits a step rather than being cut)
            take, job.pending = job.pending[:chunk], job.pending[chunk:]
            job.turn = next(self._tickets)
            room -= chunk
            for k, token in enumerate(take):
                last = not job.pending and k == len(take) - 1
                if last:
                    sampled.append((job, batch.n_tokens))
                self._add(job, token, logits=last)
        status = self._llama_cpp.llama_decode(self.ctx.ctx, batch)
        self.steps += 1
        if status != 0:
            log.error("llama_decode failed (%d) with %d sequence(s)", status, len(self._running))
            for job in list(self._running):
                self._fail(job, RuntimeError(f"llama_decode returned {status}"))
            return
        for job, index in sampled:
            self._sample(job, index)

    def _add(self, job: _Job, token: int, *, logits: bool) -> None:
        batch, i = self._batch, self._batch.n_tokens
        assert job.stream is not None
        batch.token[i] = token
        batch.pos[i] = len(job.stream.cached)
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = job.stream.seq
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        job.stream.cached.append(token)

    def _sample(self, job: _Job, index: int) -> None:
        try:
            token = job.sampler.sample(self.ctx, index)
            if self._llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
                self._finish(job, "stop")
                return
            job.completion += 1
            piece = bytes(self.model.detokenize([token]))
            if job.scorer is not None:
                job.scored.append(job.scorer.score(index, token, piece,
                                                   job.request.logprobs or 0))
            assert job.stops is not None
            safe, stopped = job.stops.feed(job.decoder.feed(piece))
            if safe:
                self._outbox.append((job, job.emit, TextDelta(safe, tuple(job.scored))))
                job.scored = []
            if stopped:
                self._finish(job, "stop", matched=True)
            elif job.completion >= job.limit:
                self._finish(job, "cancelled" if job.cancel.is_set() else "length")
            else:
                job.next_token = token
        except Exception as exc:  # one job's failure (e.g. a grammar) ends that job only
            self._fail(job, exc)

    def _finish(self, job: _Job, reason: FinishReason, matched: bool = False) -> None:
        assert job.stops is not None
        if not matched and reason != "cancelled":
            tail, _ = job.stops.feed(job.decoder.finish())
            tail += job.stops.flush()
            if tail or job.scored:  # a dropped partial character leaves logprobs and no text
                self._outbox.append((job, job.emit, TextDelta(tail, tuple(job.scored))))
        self._outbox.append((job, job.emit, Finished(reason, len(job.prompt), job.completion,
                                                     job.stops.matched, job.cached)))
        self._release(job)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if job.stream is not None:  # what its cells hold is unknown now: start it clean
            self._llama_cpp.llama_memory_seq_rm(self._memory, job.stream.seq, -1, -1)
            job.stream.cached.clear()
        self._outbox.append((job, job.emit, exc))
        self._release(job)

    def _release(self, job: _Job) -> None:
        self._running.remove(job)
        if job.stream is not None:
            job.stream.busy = False
            job.stream.last_used = time.monotonic()
        if job.sampler is not None:
            job.sampler.close()
        self._outbox.append((job, _call, job.done))


def _internals() -> Any:
    """llama-cpp-python's low-level wrappers (untyped): model, context and sampler chains."""
    return importlib.import_module("llama_cpp._internals")


def _call(fn: Callable[[], None]) -> None:
    fn()


def _deliver(items: list[tuple[Callable[[Any], object], Any]]) -> None:
    for action, argument in items:
        try:
            action(argument)
        except Exception:  # one item's failure must not skip another job's events or ``done``
            log.exception("llama.cpp hand-over failed")


class LlamaCppBackend:
    name = "llama.cpp"
    formats: frozenset[ModelFormat] = frozenset({"gguf"})

    def __init__(self, prefix_cache: PrefixReuse = "extend") -> None:
        self.prefix_cache = prefix_cache

    def problem(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed (run scripts/bootstrap.sh, or pip install it)"
        return None

    def default_slots(self, model: LocalModel) -> int:
        """As many sequences as fit ``KV_BUDGET`` at the model's full context, 1 to
        ``DEFAULT_SLOTS``: 8 for a small model, 1-3 for a 7B one at 8k context."""
        from llama_cpp import Llama

        meta = Llama(model_path=str(model.path), vocab_only=True, verbose=False).metadata
        arch = meta.get("general.architecture", "")
        try:
            layers = int(meta[f"{arch}.block_count"])
            heads = int(meta[f"{arch}.attention.head_count"])
            kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
            head_dim = int(meta.get(f"{arch}.attention.key_length",
                                    int(meta[f"{arch}.embedding_length"]) // heads))
        except (KeyError, ValueError, ZeroDivisionError):
            return 1
        per_slot = 2 * layers * kv_heads * head_dim * 2 * model.context_length  # K and V, f16
        return max(1, min(DEFAULT_SLOTS, KV_BUDGET // max(1, per_slot)))

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> LlamaCppModel:
        return LlamaCppModel(model, slots=slots, threads=threads, reuse=self.prefix_cache)


class LlamaCppModel:
    """One GGUF model resident in llama.cpp: one context of ``slots`` sequences."""

    capabilities = CAPABILITIES  # grammars give tools and JSON schemas; logits give logprobs

    def __init__(self, model: LocalModel, *, slots: int = 1, threads: int | None = None,
                 reuse: PrefixReuse = "extend") -> None:
        import llama_cpp

        self.model = model
        threads = threads or os.cpu_count() or 1
        slots = min(slots, MAX_SLOTS)
        self._slots = slots
        self._busy = 0
        self._free = asyncio.Semaphore(slots)  # bound to a loop only when someone waits
        self._prompts = PromptBuilder.vocab_only(model.path)
        self._llama_model = _internals().LlamaModel(path_model=str(model.path),
                                       params=llama_cpp.llama_model_default_params(), verbose=False)
        try:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = model.context_length * slots  # each stream gets the full context
            params.n_batch = params.n_ubatch = N_BATCH
            params.n_seq_max = slots
            params.kv_unified = False
            params.n_threads = params.n_threads_batch = threads
            params.no_perf = True
            self._ctx = _internals().LlamaContext(model=self._llama_model, params=params, verbose=False)
            self._batcher = _Batcher(self._llama_model, self._ctx, self._prompts,
                                     model.context_length, slots, reuse)
        except BaseException:
            self._llama_model.close()
            raise

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def busy_slots(self) -> int:
        return self._busy

    @property
    def decode_steps(self) -> int:
        return self._batcher.steps

    @property
    def template_hash(self) -> str:
        """The chat template this model renders with, hashed for the runtime manifest."""
        return template_hash(self._prompts.template_source)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompts.tokens(request))

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        await self._free.acquire()
        self._busy += 1
        relay = EventRelay()
        # The slot is free again once the engine thread let go of the job, however this
        # coroutine ends: ``done`` runs on this loop just after the job's last event.
        job = _Job(request, max_tokens_cap, cancel, cache_scope, asyncio.get_running_loop(),
                   emit=relay.put, done=self._released)
        self._batcher.submit(job)
        try:
            async for event in relay.events():
                yield event
        finally:
            cancel.set()  # consumer of this iterator left early: stopped at the next step

    def _released(self) -> None:
        self._busy -= 1
        self._free.release()

    def close(self) -> None:
        if not self._batcher.close():
            return
        self._ctx.close()
        self._llama_model.close()

