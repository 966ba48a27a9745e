"""Hostile review of issue 14 (continuous batching, the per-account prefix cache, the overlapped
reservation, frame and write batching). Pure Python: no model is loaded, the engine thread's
llama.cpp calls are fakes. Each ``xfail(strict=True)`` test shows a finding of
/work/notes/hostile_batching.md; the others pin what holds."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from darkbloom.coordinator.api.provider_ws import concurrency_cap
from darkbloom.coordinator.commit import Committed
from darkbloom.coordinator.pipeline import Call, Pipeline
from darkbloom.coordinator.relay import SSERelay
from darkbloom.coordinator.routing.affinity import CacheScopes, LastServed
from darkbloom.coordinator.routing.scheduler import Route
from darkbloom.coordinator.store import charging
from darkbloom.coordinator.store.ledger import InsufficientFunds
from darkbloom.crypto import KeyPair
from darkbloom.errors import InvalidRequest, PaymentRequired
from darkbloom.protocol.frames import Hardware, InferenceRequest, Register, Sealed
from darkbloom.provider import serving
from darkbloom.provider.engines import llamacpp
from darkbloom.provider.engines.llamacpp import N_BATCH, PREFILL_CHUNK, _Batcher, _Job, _Stream

# --- fakes for the engine thread -------------------------------------------------------------


class _FakeSampler:
    def close(self) -> None:
        pass


class _ImmediateLoop:
    """Stands in for the agent's loop: a hand-over runs at once, on the calling thread."""

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        fn(*args)


def _bare_batcher(streams: list[_Stream], reuse: llamacpp.PrefixReuse = "extend",
                  tokens: list[int] | None = None, model: Any = None) -> _Batcher:
    """A _Batcher with no llama.cpp behind it and no thread started."""
    b = object.__new__(_Batcher)
    b._llama_cpp = SimpleNamespace(llama_memory_seq_rm=lambda *a: True,
                                   llama_decode=lambda ctx, batch: 0)
    b.model = model or SimpleNamespace(n_vocab=lambda: 100)
    b.ctx = SimpleNamespace(ctx=None)
    b.prompts = SimpleNamespace(tokens=lambda request: list(tokens or [1, 2, 3]))
    b.context_length = 100_000
    b.reuse = reuse
    b._memory = None
    b._batch = SimpleNamespace(token=[0] * N_BATCH, pos=[0] * N_BATCH, n_seq_id=[0] * N_BATCH,
                               seq_id=[[0] for _ in range(N_BATCH)], logits=[False] * N_BATCH,
                               n_tokens=0)
    b._streams = streams
    b.steps = 0
    b._tickets = itertools.count()
    b._running = []
    b._inbox = queue.SimpleQueue()
    b._outbox = []
    b._sampler = lambda request: _FakeSampler()  # type: ignore[method-assign]
    return b


def _request(logprobs: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(endpoint="/v1/chat/completions", max_tokens=None, stop=(),
                           logprobs=logprobs)


def _job(scope: str | None, log: list[Any], request: Any = None) -> _Job:
    return _Job(request or _request(), 16, threading.Event(), scope, _ImmediateLoop(),  # type: ignore[arg-type]
                emit=log.append, done=lambda: log.append("done"))


# --- what holds ------------------------------------------------------------------------------


def test_scopes_differ_per_provider_and_account_and_are_stable() -> None:
    scopes = CacheScopes(b"k" * 32)
    assert scopes.scope("a", "p1") == scopes.scope("a", "p1")
    assert len({scopes.scope("a", "p1"), scopes.scope("a", "p2"), scopes.scope("b", "p1")}) == 3
    assert CacheScopes(b"j" * 32).scope("a", "p1") != scopes.scope("a", "p1")


def test_last_served_is_bounded() -> None:
    last = LastServed(limit=3)
    for n in range(10):
        last.served(f"acct{n}", "m", "p")
    assert last.get("acct0", "m") is None and last.get("acct9", "m") == "p"
    last.served(None, "m", "p")  # an anonymous request is remembered nowhere
    assert last.get(None, "m") is None
    now = [0.0]
    aging = LastServed(max_age=60, clock=lambda: now[0])
    aging.served("a", "m", "p")
    now[0] = 60
    assert aging.get("a", "m") == "p"
    now[0] = 61  # its KV has likely been given to someone else by now
    assert aging.get("a", "m") is None


def test_another_scope_never_keeps_a_streams_cells() -> None:
    prompt = list(range(1, 40))
    theirs = _Stream(0, cached=[*prompt, 99], scope="victim", prompt_len=len(prompt))
    b = _bare_batcher([theirs], tokens=prompt)
    log: list[Any] = []
    job = _job("attacker", log)
    b._admit(job)
    assert job.stream is theirs and job.cached == 0 and theirs.cached == []
    unscoped = _job(None, log)
    theirs.busy = False
    theirs.cached, theirs.scope = [*prompt, 99], "victim"
    b._admit(unscoped)
    assert unscoped.cached == 0


# --- findings --------------------------------------------------------------------------------


def test_extend_reuses_only_an_extension_of_the_last_prompt() -> None:
    system = list(range(100, 400))  # one account's system prompt, shared by its conversations
    conv1, conv2 = [*system, 1, 2, 3], [*system, 7, 8, 9]
    after_conv1 = _Stream(0, cached=[*conv1, 40, 41], scope="s", prompt_len=len(conv1), kept=0)
    # docs/decisions.md: "a first turn always is [clean]" -- conv2's first turn reuses 300 cells.
    assert after_conv1.reusable(conv2, "extend") == 0
    after_conv2 = _Stream(0, cached=[*conv2, 50, 51], scope="s", prompt_len=len(conv2), kept=300)
    # conv1 ran clean the first time; its identical repeat now reuses 300 cells of conv2's run.
    assert after_conv2.reusable(conv1, "extend") == 0


def test_reusable_never_negative() -> None:
    stream = _Stream(0, cached=[5, 6], scope="s", prompt_len=2, kept=0)
    assert stream.reusable([], "any") >= 0


def test_engine_thread_survives_a_failing_admission() -> None:
    def broken() -> int:
        raise RuntimeError("n_vocab")

    b = _bare_batcher([_Stream(0)], model=SimpleNamespace(n_vocab=broken))
    log: list[Any] = []
    b._inbox.put(_job(None, log, _request(logprobs=2)))
    b._inbox.put(None)
    b._work()  # returns on None rather than raising out of the engine thread
    assert "done" in log and any(isinstance(item, BaseException) for item in log)


def test_a_second_prompt_is_not_starved_by_a_long_one() -> None:
    """F9 (fixed): prompt chunks go round-robin, so a short prompt admitted after a long one is
    read within a step or two, and the long one still advances."""
    streams = [_Stream(0), _Stream(1), _Stream(2)]
    b = _bare_batcher(streams)
    log: list[Any] = []
    generating, long, short = _job("a", log), _job("b", log), _job("c", log)
    for job, stream in zip((generating, long, short), streams, strict=True):
        job.stream, job.stops, job.turn = stream, None, next(b._tickets)  # as _admit does
        stream.busy = True
        b._running.append(job)
    generating.next_token = 7
    long.pending = [1] * (PREFILL_CHUNK * 20)
    short.pending = [1] * PREFILL_CHUNK

    def sample(job: _Job, index: int) -> None:
        job.next_token = 7  # every sampled job keeps generating

    b._sample = sample  # type: ignore[method-assign]
    for _ in range(3):
        b._step()
    assert len(short.pending) < PREFILL_CHUNK, "the short prompt read nothing in 3 steps"
    assert len(long.pending) == PREFILL_CHUNK * 18, "the long prompt stopped advancing"


def test_a_long_prompt_is_not_starved_by_a_stream_of_short_ones() -> None:
    """Round-robin by ticket, not by step: a prompt admitted after the long one started goes to
    the back of the line, so clients keeping every free slot filled with PREFILL_CHUNK prompts
    (each done the step it is read) cannot hold a half-read long prompt back: it reads at least
    once every ``slots - 1`` steps."""
    streams = [_Stream(n) for n in range(8)]
    b = _bare_batcher(streams)
    log: list[Any] = []
    generating, long = _job("a", log), _job("b", log)
    for job, stream in zip((generating, long), streams[:2], strict=True):
        job.stream, job.stops, job.turn = stream, None, next(b._tickets)
        stream.busy = True
        b._running.append(job)
    generating.next_token = 7
    long.pending = [1] * (PREFILL_CHUNK * 20)

    def sample(job: _Job, index: int) -> None:
        if job is generating:
            job.next_token = 7
        elif job is not long:  # a short one answered its one token: it leaves
            b._running.remove(job)
            assert job.stream is not None
            job.stream.busy = False

    b._sample = sample  # type: ignore[method-assign]
    reads = []
    for step in range(40):
        for free in [s for s in streams if not s.busy]:  # every free slot takes a short prompt
            short = _job("c", log)
            short.stream, short.stops, short.turn = free, None, next(b._tickets)
            short.pending = [1] * PREFILL_CHUNK
            free.busy = True
            b._running.append(short)
        before = len(long.pending)
        b._step()
        if len(long.pending) < before:
            reads.append(step)
    gaps = [b - a for a, b in zip([0, *reads], reads, strict=False)]
    assert reads and max(gaps) <= len(streams) - 1, f"the long prompt read at steps {reads}"


async def test_consumer_sealed_requests_ignore_the_coordinators_scope(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    channel = SimpleNamespace(seal=lambda *a: "sealed")
    monkeypatch.setattr(serving, "_open", lambda frame, keys: (channel, body))

    async def generate(request: Any, cap: int, cancel: Any, scope: str | None) -> Any:
        seen.append(scope)
        raise InvalidRequest("stop here")
        yield  # pragma: no cover

    engine = SimpleNamespace(serves=lambda m: True, model_info=lambda m: None, generate=generate)
    sent: list[Any] = []

    async def send(frame: Any) -> None:
        sent.append(frame)

    server = serving.RequestServer(engine, KeyPair.generate(), send)  # type: ignore[arg-type]
    frame = InferenceRequest(request_id="r1", model="m", endpoint="/v1/chat/completions",
                             stream=False, max_tokens_cap=8, sealed_by="consumer",
                             encrypted_body=Sealed(ephemeral_public_key="e", ciphertext="c"),
                             cache_scope="victims-scope")
    await server.serve(frame, threading.Event())
    assert seen == [None]


def _pipeline(committer: Any) -> Pipeline:
    return Pipeline(None, None, committer, None, None,  # type: ignore[arg-type]
                    SimpleNamespace(submit=lambda outcome: None), None)


async def test_an_account_that_cannot_pay_reaches_at_most_one_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    dispatched: list[Route] = []

    class Committer:
        dispatcher = SimpleNamespace(cancel=lambda attempt: None)

        async def commit(self, prepared: Any, route: Route) -> Committed:
            dispatched.append(route)
            await asyncio.Event().wait()  # a provider reading the prompt
            raise AssertionError

    pipeline = _pipeline(Committer())
    prepared = SimpleNamespace(model=SimpleNamespace(id="m"), request=SimpleNamespace(stream=True),
                               prompt_tokens=8000, media=None)

    async def prepare(call: Call) -> Any:
        return prepared

    async def refund(hold: Any) -> None:
        pass

    gate = asyncio.Event()

    async def reserve(sessions: Any, hold: Any, coordinator_id: Any = None) -> None:
        await gate.wait()
        raise InsufficientFunds

    pipeline._prepare = prepare  # type: ignore[method-assign]
    pipeline._refund = refund  # type: ignore[method-assign]
    pipeline._hold = lambda call, prepared, rid: charging.Hold(  # type: ignore[method-assign]
        rid, "acct", 10**9, 1, 1, 8000, 4096, "key")
    monkeypatch.setattr(charging, "reserve", reserve)
    pipeline._payers["acct"] = None  # one cheap request of this account's reserved fine before
    call = Call("/v1/chat/completions", b"{}",
                SimpleNamespace(key_id="key", account_id="acct"), None)  # type: ignore[arg-type]
    opens = [asyncio.ensure_future(pipeline.open(call)) for _ in range(8)]
    for _ in range(10):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*opens, return_exceptions=True)
    assert all(isinstance(r, PaymentRequired) for r in results)
    assert len(dispatched) <= 1, f"{len(dispatched)} providers prefilled for an account that can't pay"


async def test_a_cancel_after_the_commit_finished_cancels_its_attempt() -> None:
    go = asyncio.Event()
    cancelled: list[Any] = []
    attempt = object()

    class Committer:
        dispatcher = SimpleNamespace(cancel=cancelled.append)

        async def commit(self, prepared: Any, route: Route) -> Committed:
            await go.wait()
            return Committed(attempt, b"data: {}", 1, prepared)  # type: ignore[arg-type]

    pipeline = _pipeline(Committer())

    async def reserve(hold: Any, low_balance: str = "") -> None:
        return None

    pipeline._reserve = reserve  # type: ignore[method-assign]
    task = asyncio.ensure_future(pipeline._reserve_while_committing(
        None, None, Route()))  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)  # the hold stands; it waits for the first chunk
    go.set()
    await asyncio.sleep(0)  # the commit task finishes; the waiter is woken but has not run
    task.cancel()  # the consumer hangs up in that instant
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [attempt]


async def test_a_write_cancelled_before_the_transport_took_it_counts_nothing() -> None:
    """F7 (not a finding): uvicorn's ``send`` waits for the transport to drain *before* it
    writes (httptools_impl and h11_impl alike), so a send cancelled while it waits wrote none of
    its body, and none of its events may be charged as relayed."""
    relay = object.__new__(SSERelay)
    relay.reply_channel = None
    relay.relayed, relay.content_done = 0, False
    relay.opened = SimpleNamespace(outcome=SimpleNamespace(bytes_out=0),  # type: ignore[assignment]
                                   prepared=SimpleNamespace(sealed_for=None), delivered=[])
    relay.pipeline = SimpleNamespace(begin=lambda opened: None)  # type: ignore[assignment]

    async def send(message: Any) -> None:
        raise asyncio.CancelledError  # cancelled in flow.drain(), before transport.write

    events = [f'data: {{"n":{n}}}'.encode() for n in range(50)]
    with pytest.raises(asyncio.CancelledError):
        await relay._write(send, events)
    assert relay.relayed == 0 and relay.opened.delivered == []
    assert relay.opened.outcome.bytes_out == 0 and not relay.content_done


def test_an_unverified_slot_claim_is_bounded() -> None:
    liar = Register(hardware=Hardware(memory_gb=8), max_concurrency=256)
    assert concurrency_cap(liar) <= 16
