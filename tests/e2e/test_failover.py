"""Failover with real processes (protocol.md §9, billing.md §4), each timer shortened.

Before the first chunk a failure is invisible: a scripted FakeProvider (a real WebSocket) fails
an attempt and a real `darkbloom serve` provider on llama.cpp answers it; the consumer sees one
200, charged once. Getting the request to the fake first, whatever the routing cost model says:
the good provider's only slot is held by an "occupier" stream (another account's, grammar-forced
to run for hundreds of tokens) and the fake is unroutable (its challenge unanswered) until then,
so when the consumer's request comes the fake is the only provider with a free slot. Once the fake
holds the request the occupier hangs up, freeing the good provider's slot for the retry; a fake
that fails at once first waits for that (``gate``), having sent ``inference_accepted``.

After the first chunk there is no failover, so those tests run a fake alone on a second
coordinator: the consumer gets a terminal error in its dialect and pays what billing.md §4 says
(nothing for a provider's failure or stall; what was delivered when the coordinator's response
deadline cuts it). Tests assert behaviour, never durations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest

from darkbloom.coordinator.money import request_cost
from darkbloom.crypto import KeyPair
from darkbloom.crypto.signing import IdentityKey
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.protocol.frames import CLOSE_EVICTED, CLOSE_PROTOCOL_ORDER
from tests.e2e.fakes import FakeProvider, Job, good_answer
from tests.e2e.harness import MODEL, OPERATOR, Coordinator, Provider, _cli

pytestmark = pytest.mark.e2e

# protocol.md §9's timers, shortened, where a real provider serves retries: each leaves room for
# llama.cpp on a busy machine. Heartbeat silence must end a fake before the accepted timer would.
FAILOVER_TIMERS: dict[str, Any] = {
    "first_response_timeout_s": 4, "accepted_timeout_s": 10, "chunk_timeout_s": 10,
    "heartbeat_interval_s": 1, "heartbeat_timeout_s": 5, "register_timeout_s": 1,
}
# Where a fake is alone: the chunk timer well inside the response deadline.
ALONE_TIMERS: dict[str, Any] = {"chunk_timeout_s": 2, "response_deadline_s": 5,
                                "register_timeout_s": 1}
FAKE_HEARTBEAT_S = 0.5
HI = [{"role": "user", "content": "Say hello."}]
OCCUPANT = "occupant"  # the account whose stream holds the good provider's slot
# A stream the good provider cannot end for hundreds of tokens: the grammar demands 100 numbers.
OCCUPY = {"model": MODEL, "stream": True, "max_tokens": 1000,
          "messages": [{"role": "user", "content": "List numbers."}],
          "response_format": {"type": "json_schema", "json_schema": {"name": "numbers", "schema": {
              "type": "object", "properties": {"n": {"type": "array", "items": {"type": "integer"},
                                                     "minItems": 100, "maxItems": 100}},
              "required": ["n"], "additionalProperties": False}}}}

T = TypeVar("T")
Script = Callable[[Job, asyncio.Event], Awaitable[None]]


def chat_delta(text: str, role: bool = False) -> str:
    delta = {"role": "assistant", "content": text} if role else {"content": text}
    return "data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                  "created": 0, "model": MODEL,
                                  "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def chat_body(text: str) -> str:
    return "data: " + json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})


def anthropic_start() -> list[str]:
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": MODEL,
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 5, "output_tokens": 0}}
    return ["event: message_start\ndata: " + json.dumps({"type": "message_start", "message": message}),
            "event: content_block_start\ndata: " + json.dumps(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            "event: content_block_delta\ndata: " + json.dumps(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}})]


@dataclass
class Stack:
    coordinator: Coordinator
    operator_key: str
    good_id: str = ""  # the real provider's id, where there is one
    occupant_key: str = ""

    @property
    def consumer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.coordinator.api_key}"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A coordinator with a good provider: one llama.cpp slot."""
    coordinator = Coordinator(tmp_path_factory.mktemp("failover"), **FAILOVER_TIMERS).start()
    # It heartbeats at the interval the coordinator sends in `registered` (1 s here), at once.
    provider = Provider(coordinator, slots=1).start()
    try:
        operator_key = _cli(["keys", "create", "--account", OPERATOR], coordinator.env)
        occupant_key = _cli(["keys", "create", "--account", OCCUPANT], coordinator.env)
        _cli(["admin", "credit", "--account", OCCUPANT, "--amount", "100"], coordinator.env)
        [good] = httpx.get(f"{coordinator.base_url}/v1/providers/attestation",
                           timeout=10).json()["providers"]
        yield Stack(coordinator, operator_key, good["provider_id"], occupant_key)
    finally:
        provider.stop()
        coordinator.stop()


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A coordinator where each test's fake is the only provider."""
    coordinator = Coordinator(tmp_path_factory.mktemp("failover-alone"), **ALONE_TIMERS).start()
    try:
        yield Stack(coordinator, _cli(["keys", "create", "--account", OPERATOR], coordinator.env))
    finally:
        coordinator.stop()


# --- reading the network and the money ---------------------------------------------------------

async def get(stack: Stack, path: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else stack.consumer
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{stack.coordinator.base_url}{path}", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def listing(stack: Stack) -> dict[str, dict[str, Any]]:
    providers = (await get(stack, "/v1/providers/attestation"))["providers"]
    return {p["provider_id"]: p for p in providers}


async def until(check: Callable[[], Awaitable[bool]], what: str, wait_s: float = 60) -> None:
    deadline = time.monotonic() + wait_s
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def cancel_arrived(fake: FakeProvider) -> bool:
    return bool(fake.cancels)


async def status_is(stack: Stack, provider_id: str, *statuses: str) -> bool:
    entry = (await listing(stack)).get(provider_id)
    return entry is not None and entry["routable"] and entry["status"] in statuses


@dataclass
class Books:
    """The consumer's balance and usage rows, and the operator's earnings rows (every provider
    here earns for the operator account; a row's provider_id says which one)."""

    balance: int
    usage: dict[str, dict[str, Any]]
    earnings: list[dict[str, Any]]

    @classmethod
    async def read(cls, stack: Stack) -> Books:
        balance = int((await get(stack, "/v1/payments/balance"))["balance_micro_usd"])
        usage = {row["request_id"]: row for row in (await get(stack, "/v1/payments/usage"))["usage"]}
        earnings = await get(stack, "/v1/provider/account-earnings?limit=1000", stack.operator_key)
        return cls(balance, usage, list(earnings["earnings"]))

    def since(self, before: Books) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """New usage rows, and the earnings rows for them."""
        rows = [row for rid, row in self.usage.items() if rid not in before.usage]
        jobs = {row["request_id"] for row in rows}
        return rows, [e for e in self.earnings if e["job_id"] in jobs]

    def earned_by(self, provider_id: str) -> list[dict[str, Any]]:
        return [e for e in self.earnings if e["provider_id"] == provider_id]


async def settled(stack: Stack, before: Books, rows: int) -> Books:
    """The books once ``rows`` new usage rows exist and no hold is left open (settling and
    refunding run after the response, off its path)."""
    async def done() -> bool:
        books = await Books.read(stack)
        new, _ = books.since(before)
        return len(new) >= rows and before.balance - books.balance == sum(r["cost_micro_usd"] for r in new)

    await until(done, f"{rows} settled request(s) and no hold left open")
    return await Books.read(stack)


def cost_of(prompt: int, completion: int) -> int:
    return request_cost(prompt, completion, DEFAULT_MODEL.input_price, DEFAULT_MODEL.output_price)


def assert_served_once(stack: Stack, fake: FakeProvider, before: Books, after: Books,
                       headers: httpx.Headers) -> None:
    """One 200 from the good provider, one usage row, charged once, earned by the good provider."""
    assert headers["x-provider-id"] == stack.good_id != fake.registered["provider_id"]
    rows, earned = after.since(before)
    assert [row["status"] for row in rows] == ["completed"]
    assert before.balance - after.balance == rows[0]["cost_micro_usd"] > 0
    assert [e["provider_id"] for e in earned] == [stack.good_id]
    assert not after.earned_by(fake.registered["provider_id"])


async def assert_nothing_charged(stack: Stack, fake: FakeProvider, before: Books) -> None:
    """billing.md §4: a stream cut by the provider side is refunded in full; it earns nothing."""
    async def refunded() -> bool:
        return (await Books.read(stack)).balance == before.balance

    await until(refunded, "the whole hold refunded")
    after = await Books.read(stack)
    assert after.since(before) == ([], [])
    assert not after.earned_by(fake.registered["provider_id"])


# --- the fake first, the good provider second --------------------------------------------------

@contextlib.asynccontextmanager
async def occupied(stack: Stack) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The good provider's only slot held by another account's stream; yields ``release``,
    which hangs up (the coordinator cancels the stream at once) and waits for the slot.

    Held from its first chunk on: by then llama.cpp is generating, so the provider stops at its
    next token when cancelled (it cannot stop while still setting up the grammar), and the retry
    that follows the release finds the engine free."""
    generating = asyncio.Event()

    async def occupy() -> None:
        async with httpx.AsyncClient(timeout=120) as http, http.stream(
                "POST", f"{stack.coordinator.base_url}/v1/chat/completions", json=OCCUPY,
                headers={"Authorization": f"Bearer {stack.occupant_key}"}) as answer:
            assert answer.status_code == 200, await answer.aread()
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    generating.set()

    occupier = asyncio.ensure_future(occupy())

    async def busy() -> bool:
        assert not occupier.done(), occupier.exception() or "the occupier ended early"
        return generating.is_set() and await status_is(stack, stack.good_id, "serving")

    async def release() -> None:
        if not occupier.done():
            occupier.cancel()
            await asyncio.gather(occupier, return_exceptions=True)
            await until(lambda: status_is(stack, stack.good_id, "online"),
                        "the good provider's slot free again")

    await until(busy, "the occupier holding the good provider's slot")
    try:
        yield release
    finally:
        await release()


async def fake_first(stack: Stack, script: Script, call: Callable[[], Awaitable[T]]
                     ) -> tuple[T, FakeProvider]:
    """Run ``call`` (the consumer) so that its request reaches a fake running ``script`` first;
    the script's gate opens once the good provider has a free slot for the retry."""
    coordinator = stack.coordinator
    await asyncio.to_thread(coordinator.wait_providers, 1)  # only the good provider
    gate = asyncio.Event()
    challenges: list[dict[str, Any]] = []

    def later(identity: IdentityKey, keys: KeyPair, challenge: dict[str, Any]) -> None:
        challenges.append(challenge)  # answered once the good provider is busy

    async with FakeProvider(coordinator, answer=later, behaviour=lambda job: script(job, gate),
                            heartbeat_s=FAKE_HEARTBEAT_S) as fake:
        fake_id = fake.registered["provider_id"]
        async with occupied(stack) as release:
            async def challenged() -> bool:
                return bool(challenges)

            await until(challenged, "the fake's first challenge")
            await fake.send(good_answer(fake.identity, fake.keys, challenges[0]))
            await until(lambda: status_is(stack, fake_id, "online"), "the fake routable")
            consumer = asyncio.ensure_future(call())

            async def dispatched() -> bool:
                assert not consumer.done() or fake.requests, consumer.result()
                return fake.requests > 0

            await until(dispatched, "the request at the fake")
            await release()
            gate.set()
            result = await consumer
    assert fake.requests == 1
    return result, fake


def openai_client(stack: Stack) -> openai.AsyncOpenAI:
    return stack.coordinator.async_client()


def anthropic_client(stack: Stack) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.coordinator.base_url,
                                    api_key=stack.coordinator.api_key, max_retries=0, timeout=120)


async def openai_stream(stack: Stack) -> tuple[str, httpx.Headers]:
    stream = await openai_client(stack).chat.completions.create(model=MODEL, messages=HI,
                                                                  max_tokens=3, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    return text, stream.response.headers


async def openai_plain(stack: Stack) -> tuple[str, httpx.Headers]:
    raw = await openai_client(stack).chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_tokens=3)
    return raw.parse().choices[0].message.content or "", raw.headers


# --- 1. before the first chunk: replaced, invisibly --------------------------------------------

async def test_an_error_before_the_first_chunk_is_replaced_anthropic(net: Stack) -> None:
    """inference_error before any chunk is an ordinary failed attempt: the Anthropic SDK sees
    one 200 Message, the good provider's."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await gate.wait()
        await job.error(503, "scripted overload")

    async def call() -> httpx.Headers:
        raw = await anthropic_client(net).messages.with_raw_response.create(
            model=MODEL, max_tokens=3, messages=HI)
        message = await raw.parse()
        assert message.type == "message" and message.content
        return raw.headers

    before = await Books.read(net)
    headers, fake = await fake_first(net, script, call)
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


async def test_an_error_before_the_first_chunk_is_replaced_openai(net: Stack) -> None:
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await gate.wait()
        await job.error(500, "scripted failure")

    before = await Books.read(net)
    (text, headers), fake = await fake_first(net, script, lambda: openai_stream(net))
    assert text
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


async def test_a_drop_before_the_first_chunk_is_replaced(net: Stack) -> None:
    """The socket cut with no close frame (a crash) after inference_accepted: provider
    disconnected, an ordinary failed attempt."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await gate.wait()
        job.drop()

    before = await Books.read(net)
    (text, headers), fake = await fake_first(net, script, lambda: openai_stream(net))
    assert text
    assert fake.registered["provider_id"] not in await listing(net)
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


async def test_first_response_timer_retries_elsewhere(net: Stack) -> None:
    """Neither inference_accepted nor a chunk within the first-response timer: the attempt
    fails, the fake gets a cancel, the good provider answers. The fake's late answer to the
    cancelled id is dropped: charged once."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        assert await job.cancelled()
        await job.accepted()
        await job.chunk(chat_body("late"))
        await job.complete(5, 1)

    before = await Books.read(net)
    (text, headers), fake = await fake_first(net, script, lambda: openai_plain(net))
    assert text != "late"
    # The cancel follows the consumer's error, on another connection: wait for it.
    await until(lambda: cancel_arrived(fake), "the cancel reaches the provider", 20)
    assert fake.cancels == [fake.jobs[0].request_id]
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


async def test_accepted_timer_retries_elsewhere(net: Stack) -> None:
    """inference_accepted, then no chunk within the accepted timer: the attempt fails and is
    cancelled; late chunks for the cancelled id are dropped."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        assert await job.cancelled()
        await job.chunk(chat_delta("late", role=True))
        await job.complete(5, 1)

    before = await Books.read(net)
    (text, headers), fake = await fake_first(net, script, lambda: openai_stream(net))
    assert text and "late" not in text
    # The cancel follows the consumer's error, on another connection: wait for it.
    await until(lambda: cancel_arrived(fake), "the cancel reaches the provider", 20)
    assert fake.cancels == [fake.jobs[0].request_id]
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


async def test_heartbeat_silence_evicts_with_4004_and_the_request_fails_over(net: Stack) -> None:
    """A provider silent past the heartbeat timeout is closed with 4004, gone from the public
    listing, and treated as disconnected: its in-flight request goes to the good provider."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        job.fake.heartbeating = False
        await job.accepted()

    before = await Books.read(net)
    (text, headers), fake = await fake_first(net, script, lambda: openai_stream(net))
    assert text
    assert fake.close_code == CLOSE_EVICTED
    assert fake.registered["provider_id"] not in await listing(net)
    assert_served_once(net, fake, before, await settled(net, before, 1), headers)


# --- 2. after the first chunk: a terminal error in the caller's dialect -----------------------

async def serve_alone(stack: Stack, script: Script, call: Callable[[], Awaitable[T]]
                      ) -> tuple[T, FakeProvider]:
    """``call`` against a coordinator whose only provider is a fake running ``script``."""
    gate = asyncio.Event()
    gate.set()
    async with FakeProvider(stack.coordinator, behaviour=lambda job: script(job, gate)) as fake:
        await asyncio.to_thread(stack.coordinator.wait_providers, 1)
        result = await call()
    await asyncio.to_thread(stack.coordinator.wait_providers, 0)
    assert fake.requests == 1
    return result, fake


async def raw_stream(stack: Stack, body: dict[str, Any]) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=60) as http, http.stream(
            "POST", f"{stack.coordinator.base_url}/v1/chat/completions", json=body,
            headers=stack.consumer) as answer:
        return answer.status_code, (await answer.aread()).decode()


async def sdk_stream_error(stack: Stack, max_tokens: int = 8) -> openai.APIError:
    stream = await openai_client(stack).chat.completions.create(model=MODEL, messages=HI,
                                                                  max_tokens=max_tokens, stream=True)
    with pytest.raises(openai.APIError) as failed:
        async for _ in stream:
            pass
    return failed.value


async def test_an_error_after_the_first_chunk_ends_the_stream_and_costs_nothing(alone: Stack) -> None:
    """Committed: no failover. The OpenAI stream ends with an error event in our words, with no
    receipt and no [DONE]; the whole hold is refunded and the provider earns nothing."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await job.chunk(chat_delta("Hel", role=True))
        await job.chunk(chat_delta("lo"))
        await job.error(500, "scripted failure")

    before = await Books.read(alone)
    (status, text), fake = await serve_alone(alone, script, lambda: raw_stream(
        alone, {"model": MODEL, "messages": HI, "max_tokens": 8, "stream": True}))
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert len(events) == 3
    assert json.loads(events[-1].removeprefix("data: ")) == {
        "error": {"message": "the provider failed mid-response", "type": "provider_error"}}
    assert "[DONE]" not in text and "receipt" not in text
    await assert_nothing_charged(alone, fake, before)


async def test_a_drop_after_the_first_chunk_is_an_openai_sdk_error(alone: Stack) -> None:
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await job.chunk(chat_delta("Hel", role=True))
        job.drop()

    before = await Books.read(alone)
    error, fake = await serve_alone(alone, script, lambda: sdk_stream_error(alone))
    assert error.body == {"message": "provider disconnected", "type": "provider_error"}
    await assert_nothing_charged(alone, fake, before)


async def test_a_drop_after_the_first_chunk_is_an_anthropic_error_event(alone: Stack) -> None:
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        for event in anthropic_start():
            await job.chunk(event)
        job.drop()

    async def call() -> tuple[list[str], anthropic.APIStatusError]:
        stream = await anthropic_client(alone).messages.create(model=MODEL, max_tokens=8,
                                                               stream=True, messages=HI)
        kinds = []
        with pytest.raises(anthropic.APIStatusError) as failed:
            async for event in stream:
                kinds.append(event.type)
        return kinds, failed.value

    before = await Books.read(alone)
    (kinds, error), fake = await serve_alone(alone, script, call)
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    assert error.body == {"type": "error", "error": {"type": "api_error",
                                                     "message": "provider disconnected"}}
    await assert_nothing_charged(alone, fake, before)


async def test_a_failure_after_the_body_of_a_plain_answer_is_a_502(alone: Stack) -> None:
    """Non-streamed: the body came but the provider failed before completing, so nothing was
    delivered: a 502 in OpenAI's JSON, nothing charged."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await job.chunk(chat_body("Hello"))
        await job.error(500, "scripted failure")

    async def call() -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as failed:
            await openai_client(alone).chat.completions.create(model=MODEL, messages=HI, max_tokens=8)
        return failed.value

    before = await Books.read(alone)
    error, fake = await serve_alone(alone, script, call)
    assert error.status_code == 502
    assert error.response.json()["error"]["type"] == "provider_error"
    assert error.response.json()["error"]["message"] == "the provider failed mid-response"
    await assert_nothing_charged(alone, fake, before)


async def test_chunk_timer_ends_the_stream_with_a_timeout_and_costs_nothing(alone: Stack) -> None:
    """A chunk, then silence past the chunk timer: the consumer gets a timeout error, the
    provider a cancel. billing.md §4: a stall after commit is the provider side's cut,
    refunded in full."""
    async def script(job: Job, gate: asyncio.Event) -> None:
        await job.accepted()
        await job.chunk(chat_delta("Hel", role=True))

    before = await Books.read(alone)
    error, fake = await serve_alone(alone, script, lambda: sdk_stream_error(alone))
    assert error.body == {"message": "provider stopped sending; response timed out",
                          "type": "timeout"}
    # The cancel follows the consumer's error, on another connection: wait for it.
    await until(lambda: cancel_arrived(fake), "the cancel reaches the provider", 20)
    assert fake.cancels == [fake.jobs[0].request_id]
    await assert_nothing_charged(alone, fake, before)


async def test_the_response_deadline_charges_what_was_delivered(alone: Stack) -> None:
    """A provider still streaming when the response deadline ends it: the coordinator's limit,
    not the provider's failure (commit.py CHARGED_AS_DELIVERED), so the consumer gets a timeout
    error and pays for what it received, as for a stream it cut, and the provider is paid for it.
    billing.md §4 has no row for this deadline; the code's choice is what is tested."""
    sent = 0

    async def script(job: Job, gate: asyncio.Event) -> None:
        nonlocal sent
        await job.accepted()
        await job.chunk(chat_delta("", role=True))
        while True:
            await job.chunk(chat_delta(" word"))
            sent += 1
            await asyncio.sleep(0.2)

    before = await Books.read(alone)
    error, fake = await serve_alone(alone, script, lambda: sdk_stream_error(alone, 1000))
    assert error.body == {"message": "the response ran past the coordinator's time limit",
                          "type": "timeout"}
    # The cancel follows the consumer's error, on another connection: wait for it.
    await until(lambda: cancel_arrived(fake), "the cancel reaches the provider", 20)
    assert fake.cancels == [fake.jobs[0].request_id]
    after = await settled(alone, before, 1)
    rows, earned = after.since(before)
    [row] = rows
    assert row["status"] == "partial"
    assert 0 < row["completion_tokens"] <= sent  # about one token per " word" relayed
    assert row["cost_micro_usd"] == cost_of(row["prompt_tokens"], row["completion_tokens"])
    assert before.balance - after.balance == row["cost_micro_usd"]
    assert [e["provider_id"] for e in earned] == [fake.registered["provider_id"]]


# --- 3. the register timer ---------------------------------------------------------------------

async def test_a_socket_that_never_registers_is_closed_with_4002(alone: Stack) -> None:
    async with FakeProvider(alone.coordinator, register=False) as silent:
        assert await silent.closed() == CLOSE_PROTOCOL_ORDER
    assert "register not received within 1 s" in alone.coordinator.log_text()


# --- the books ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["net", "alone"])
def test_every_balance_agrees_with_the_ledger(which: str, request: pytest.FixtureRequest) -> None:
    """After all of the above (retries, late frames, cuts, refunds): `darkbloom admin audit`."""
    stack: Stack = request.getfixturevalue(which)
    done = subprocess.run([sys.executable, "-m", "darkbloom", "admin", "audit"],
                          env=stack.coordinator.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
