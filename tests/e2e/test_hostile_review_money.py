"""Hostile review of the money around a request (issue 9), against a real coordinator: a scripted
provider (a real WebSocket, linked to the operator account, sealing its chunks like `darkbloom
serve`) answers as a hostile or broken provider would, and a consumer cuts, stalls or pokes the
money routes. Each test states the rule it holds the coordinator to."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from darkbloom.client.blind import MEDIA_TYPE, seal_to_providers
from darkbloom.crypto import SessionChannel, public_key_from_b64
from darkbloom.inference.catalog import DEFAULT_MODEL
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.fakes import FakeProvider
from tests.e2e.harness import CONSUMER, MODEL, OPERATOR, Coordinator, _cli

HI = [{"role": "user", "content": "Say hello."}]


class Reply:
    """One inference request as the scripted provider sees it, and the frames it can answer with."""

    def __init__(self, fake: Hostile, ws: ClientConnection, frame: dict[str, Any]) -> None:
        self.fake, self.ws, self.frame = fake, ws, frame
        self.request_id: str = frame["request_id"]
        self.stream: bool = frame["stream"]
        self.cap: int = frame["max_tokens_cap"]
        self.seq = 0
        self.channel: SessionChannel | None = None
        if frame.get("sealed_by", "coordinator") == "coordinator":
            sealed = frame["encrypted_body"]
            self.channel = SessionChannel(fake.keys, public_key_from_b64(sealed["ephemeral_public_key"]),
                                          "provider")

    async def chunk(self, event: str) -> None:
        """One event (a non-streamed body is one ``data: `` event), sealed as the provider seals."""
        if self.channel is not None:
            ciphertext = self.channel.seal("response", self.request_id, self.seq, event.encode())
        else:  # consumer-blind: the coordinator relays ciphertext it cannot open
            ciphertext = base64.b64encode(event.encode()).decode()
        await self.ws.send(json.dumps({
            "type": "inference_response_chunk", "request_id": self.request_id, "seq": self.seq,
            "encrypted_data": {"ephemeral_public_key": self.fake.keys.public_b64, "ciphertext": ciphertext}}))
        self.seq += 1

    async def accepted(self) -> None:
        await self.ws.send(json.dumps({"type": "inference_accepted", "request_id": self.request_id}))

    async def complete(self, prompt: int, completion: int) -> None:
        await self.ws.send(json.dumps({"type": "inference_complete", "request_id": self.request_id,
                                       "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}))

    async def cancelled(self, wait_s: float = 30) -> bool:
        """Wait until the coordinator cancels this request (the consumer left)."""
        for _ in range(int(wait_s / 0.02)):
            if self.request_id in self.fake.cancels:
                return True
            await asyncio.sleep(0.02)
        return False


Script = Callable[[Reply], Coroutine[Any, Any, None]]


class Hostile(FakeProvider):
    """A provider linked to the operator account that answers every request with ``script``."""

    def __init__(self, coordinator: Coordinator, script: Script, token: str | None = None,
                 slots: int | None = None) -> None:
        super().__init__(coordinator)
        self.script = script
        self.token, self.slots = token or coordinator.provider_token, slots
        self.cancels: list[str] = []
        self._jobs: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Hostile:
        """As FakeProvider's, with this provider's own token (its account) and slot count."""
        self._ws = await websockets.connect(self.coordinator.ws_url, additional_headers={
            "Authorization": f"Bearer {self.token}"})
        register: dict[str, Any] = {
            "type": "register", "public_key": self.public_key, "backend": "llama.cpp",
            "models": [{"id": MODEL, "weight_hash": DEFAULT_MODEL.weight_hash}], "attestation": self.blob}
        if self.slots is not None:
            register["max_concurrency"] = self.slots
        await self._ws.send(json.dumps(register))
        self.registered = json.loads(await asyncio.wait_for(self._ws.recv(), 10))
        assert self.registered["type"] == "registered"
        self._task = asyncio.create_task(self._serve(self._ws))
        return self

    async def _serve(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame["type"] == "attestation_challenge" and self.answer is not None:
                    reply = self.answer(self.identity, self.keys, frame)
                    if reply is not None:
                        await ws.send(json.dumps(reply))
                elif frame["type"] == "inference_request":
                    self.requests += 1
                    job = asyncio.create_task(self.script(Reply(self, ws, frame)))
                    self._jobs.add(job)
                    job.add_done_callback(self._jobs.discard)
                elif frame["type"] == "cancel":
                    self.cancels.append(frame["request_id"])
        except websockets.ConnectionClosed:
            pass
        self.close_code = ws.close_code


def chat_delta(text: str, finish: str | None = None) -> str:
    return "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                  "model": MODEL, "choices": [{"index": 0, "delta": {"content": text},
                                                               "finish_reason": finish}]})


def chat_body(message: Any) -> str:
    return "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                  "model": MODEL, "choices": [{"index": 0, "message": message,
                                                               "finish_reason": "stop"}]})


class Money:
    """The consumer's and the operator's money as the routes report it."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.base = coordinator.base_url
        self.key = {"Authorization": f"Bearer {coordinator.api_key}"}
        self.operator_key = _cli(["keys", "create", "--account", OPERATOR], coordinator.env)

    async def get(self, path: str, key: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else self.key
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.get(f"{self.base}{path}", headers=headers, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def balance(self, key: str | None = None) -> int:
        return int((await self.get("/v1/payments/balance", key))["balance_micro_usd"])

    async def usage(self) -> list[dict[str, Any]]:
        return list((await self.get("/v1/payments/usage"))["usage"])

    async def earned(self) -> int:
        return int((await self.get("/v1/provider/account-earnings", self.operator_key))["total_micro_usd"])

    async def settled(self, count: int, wait_s: float = 15) -> list[dict[str, Any]]:
        """The usage rows once there are ``count`` of them (or whatever there is after ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        while True:
            rows = await self.usage()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)

    def audit(self) -> None:
        _cli(["admin", "audit"], self.coordinator.env)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    stack = Coordinator(tmp_path_factory.mktemp("hostile-money")).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def money(coordinator: Coordinator) -> Money:
    return Money(coordinator)


async def _serving(fake: Hostile) -> AsyncIterator[Hostile]:
    async with fake:
        await asyncio.to_thread(fake.coordinator.wait_providers, 1)
        yield fake
    await asyncio.to_thread(fake.coordinator.wait_providers, 0)


def serving(coordinator: Coordinator, script: Script) -> Any:
    return _AsyncCM(_serving(Hostile(coordinator, script)))


class _AsyncCM:
    def __init__(self, gen: AsyncIterator[Hostile]) -> None:
        self.gen = gen

    async def __aenter__(self) -> Hostile:
        return await self.gen.__anext__()

    async def __aexit__(self, *_: object) -> None:
        with pytest.raises(StopAsyncIteration):
            await self.gen.__anext__()


async def post(coordinator: Coordinator, body: dict[str, Any], path: str = "/v1/chat/completions",
               **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{coordinator.base_url}{path}", json=body,
                               headers={"Authorization": f"Bearer {coordinator.api_key}", **headers})


# --- 1. A provider's malformed answer must not leave the consumer's hold open ------------------

MALFORMED = {
    "choices is a number": ("/v1/chat/completions", "data: " + json.dumps({"choices": 5})),
    "tool_calls is a number": ("/v1/chat/completions", chat_body({"role": "assistant", "content": "hi",
                                                                  "tool_calls": 7})),
    "a lone surrogate": ("/v1/chat/completions", chat_body({"role": "assistant", "content": "\ud800 hi"})),
    "nested past the recursion limit": ("/v1/chat/completions",
                                        "data: " + '{"choices":[{"message":{"content":' + "[" * 100_000
                                        + "]" * 100_000 + "}}]}"),
    "responses content is a string": ("/v1/responses", "data: " + json.dumps(
        {"object": "response", "output": [{"type": "message", "content": "hi"}]})),
    "messages content is a number": ("/v1/messages", "data: " + json.dumps({"type": "message",
                                                                           "content": 3})),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_answer_is_still_settled(coordinator: Coordinator, money: Money, case: str) -> None:
    """The recount read the provider's JSON assuming its shapes: a number where a list belongs, a
    lone surrogate (the tokenizer's UTF-8 encode fails) or deep nesting raised out of the
    settlement task, so the request was neither settled nor refunded and the consumer's whole
    hold stayed taken until the coordinator restarted. Now it settles on the checked usage."""
    endpoint, body = MALFORMED[case]

    async def script(reply: Reply) -> None:
        await reply.chunk(body)
        await reply.complete(5, 3)

    before, rows = await money.balance(), len(await money.usage())
    request: dict[str, Any] = ({"model": MODEL, "max_output_tokens": 1000, "input": "Say hello."}
                               if endpoint == "/v1/responses" else
                               {"model": MODEL, "max_tokens": 1000, "messages": HI})
    async with serving(coordinator, script):
        answer = await post(coordinator, request, endpoint)
        assert answer.status_code == 200
        settled = await money.settled(rows + 1)
    assert len(settled) == rows + 1, "the request was never settled: its hold is still taken"
    assert settled[0]["status"] == "completed" and settled[0]["completion_tokens"] <= 3
    assert await money.balance() == before - settled[0]["cost_micro_usd"]
    money.audit()


# --- 2. A provider's huge answer must not stall the coordinator --------------------------------

async def _worst_health_latency(coordinator: Coordinator, seconds: float) -> float:
    worst = 0.0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60) as http:
        while time.monotonic() < deadline:
            started = time.monotonic()
            await http.get(f"{coordinator.base_url}/health")
            worst = max(worst, time.monotonic() - started)
            await asyncio.sleep(0.02)
    return worst


async def test_recounting_a_huge_answer_does_not_stall_the_event_loop(coordinator: Coordinator,
                                                                      money: Money) -> None:
    """The recount tokenized all of a provider's answer (up to the 64 MiB response limit) in one
    call holding the tokenizer's lock; the next request's prompt, tokenized on the event loop,
    waited for that lock, so one provider sending ~16 MiB of text froze the coordinator for
    seconds per request. The recount now stops once it has counted as many tokens as it could
    bill, in slices, off the loop."""
    words = "the quick brown fox jumps over the lazy dog " * 24_000  # ~1 MiB per event

    async def script(reply: Reply) -> None:
        if reply.cap == 2:  # the probe: answered at once
            await reply.chunk(chat_body({"role": "assistant", "content": "ok"}))
            await reply.complete(5, 1)
            return
        await reply.chunk(chat_delta(""))
        for _ in range(16):
            await reply.chunk(chat_delta(words))
        await reply.chunk(chat_delta("", finish="stop"))
        await reply.chunk("data: [DONE]")
        await reply.complete(5, reply.cap)

    rows = len(await money.usage())
    async with serving(coordinator, script):
        async with httpx.AsyncClient(timeout=120) as http, http.stream(
                "POST", f"{coordinator.base_url}/v1/chat/completions", headers=money.key,
                json={"model": MODEL, "messages": HI, "max_tokens": 4000, "stream": True}) as answer:
            async for _ in answer.aiter_bytes():
                pass
        # The settlement's recount has started; a new request's prompt is tokenized meanwhile.
        watch = asyncio.create_task(_worst_health_latency(coordinator, 4))
        await asyncio.sleep(0.2)
        probe = await post(coordinator, {"model": MODEL, "messages": HI, "max_tokens": 2})
        worst = await watch
        assert probe.status_code == 200
        settled = await money.settled(rows + 2, wait_s=60)
    assert worst < 1.0, f"the event loop stalled for {worst:.1f} s"
    big = next(row for row in settled if row["completion_tokens"] > 2)
    assert big["completion_tokens"] == 4000  # the report stands: the text holds far more


# --- 3. A consumer cutting a stream pays for what it got ---------------------------------------

async def _listing(coordinator: Coordinator) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(200):
            providers = (await http.get(f"{coordinator.base_url}/v1/providers/attestation")).json()
            if providers["providers"] and all(p.get("routable") for p in providers["providers"]):
                return list(providers["providers"])
            await asyncio.sleep(0.1)
    raise AssertionError("the provider never became routable")


async def test_a_blind_stream_cut_at_its_end_pays_for_what_it_got(coordinator: Coordinator,
                                                                   money: Money) -> None:
    """A consumer-blind stream cut by its consumer was charged the fewest tokens its events could
    carry in the wordiest dialect, (events - 16) // 8: a consumer that hung up on the last content
    event (it opens every event as it comes, so it knows) got its whole answer for an eighth of
    the output price. billing.md §4: about one token per relayed event."""
    content_events = 400

    async def script(reply: Reply) -> None:
        for _ in range(content_events):
            await reply.chunk(chat_delta("word "))
        await reply.cancelled()  # the usage and receipt would come now; the consumer has left

    rows = len(await money.usage())
    async with serving(coordinator, script):
        body = {"model": MODEL, "messages": HI, "max_tokens": 1000, "stream": True}
        sealed, _ = seal_to_providers(body, await _listing(coordinator), insecure_accept_self_signed=True)
        got = 0
        async with httpx.AsyncClient(timeout=60) as http, http.stream(
                "POST", f"{coordinator.base_url}/v1/chat/completions", content=sealed,
                headers={**money.key, "Content-Type": MEDIA_TYPE}) as answer:
            assert answer.status_code == 200
            async for line in answer.aiter_lines():
                got += line.startswith("data: ")
                if got == content_events:
                    break
        [row] = (await money.settled(rows + 1))[:1]
    assert row["status"] == "partial"
    assert row["completion_tokens"] >= content_events - 16, row


# --- 4. Our own response deadline is not the provider failing ----------------------------------

@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    stack = Coordinator(tmp_path_factory.mktemp("hostile-money-deadline"), response_deadline_s=3).start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_a_stream_that_outlives_the_response_deadline_pays_for_what_it_got(
        short_deadline: Coordinator) -> None:
    """A stream still flowing when the coordinator's response deadline (30 min by default) ends it
    was refunded in full like a provider failure: a consumer asking a slow model for 32 768
    tokens got the first half hour of them free, and the provider that produced them earned
    nothing. The deadline is the coordinator's limit, not a failure: what was delivered is
    charged (partial), and the provider paid for it."""
    money = Money(short_deadline)

    async def script(reply: Reply) -> None:
        await reply.chunk(chat_delta(""))
        for _ in range(200):
            await reply.chunk(chat_delta(" word"))
            await asyncio.sleep(0.05)
        await reply.complete(5, 200)

    before, earned = await money.balance(), await money.earned()
    async with serving(short_deadline, script):
        events = []
        async with httpx.AsyncClient(timeout=60) as http, http.stream(
                "POST", f"{short_deadline.base_url}/v1/chat/completions", headers=money.key,
                json={"model": MODEL, "messages": HI, "max_tokens": 1000, "stream": True}) as answer:
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    events.append(line)
        assert "timeout" in events[-1], events[-1]  # the in-band error (api.md §2)
        settled = await money.settled(1)
    assert len(settled) == 1, f"the delivered answer was refunded in full: {events[-1]}"
    [row] = settled
    assert row["status"] == "partial" and 20 <= row["completion_tokens"] <= len(events)
    assert await money.balance() == before - row["cost_micro_usd"]
    assert await money.earned() == earned + row["cost_micro_usd"]
    money.audit()


# --- 5. The money routes answer every input without a 5xx, and page by the instant -------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def either(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    name, database = fresh_postgres_database() if request.param == "postgresql" else (None, None)
    workdir = tmp_path_factory.mktemp(f"hostile-money-{request.param}")
    stack = Coordinator(workdir, database_url=database).start()
    try:
        yield stack
    finally:
        stack.stop()
        if name:
            drop_postgres_database(name)


ODD_QUERIES = [
    ("/v1/payments/usage", {"limit": "\u00b2"}),  # str.isdigit() says yes, int() says no
    ("/v1/payments/usage", {"limit": "\u0661\u0662"}),  # Arabic-Indic digits
    ("/v1/payments/usage", {"limit": "9" * 5000}),  # past int()'s digit limit
    ("/v1/payments/usage", {"before": "0001-01-01T00:00:00+14:00"}),  # before year 1 in UTC
    ("/v1/payments/usage", {"before": "9999-12-31T23:59:59-14:00"}),  # after year 9999 in UTC
    ("/v1/provider/account-earnings", {"limit": "\u00b2"}),
    ("/v1/provider/node-earnings", {"provider_key": "a\x00b"}),  # PostgreSQL refuses NUL in text
    ("/v1/provider/node-earnings", {"provider_key": "k", "limit": "\u00b2"}),
]


@pytest.mark.parametrize(("path", "params"), ODD_QUERIES)
def test_odd_queries_on_money_routes_are_400s(either: Coordinator, path: str, params: dict[str, str]) -> None:
    token = either.provider_token if path == "/v1/provider/node-earnings" else either.api_key
    answer = httpx.get(f"{either.base_url}{path}", params=params, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


async def test_usage_paging_compares_instants_not_clock_faces(either: Coordinator) -> None:
    """``before`` with a non-UTC offset was compared with the stored UTC times as a clock face on
    SQLite (the offset dropped), so a page could skip or repeat rows."""
    money = Money(either)

    async def script(reply: Reply) -> None:
        await reply.chunk(chat_body({"role": "assistant", "content": "hello"}))
        await reply.complete(5, 1)

    async with serving(either, script):
        assert (await post(either, {"model": MODEL, "messages": HI, "max_tokens": 4})).status_code == 200
        [row] = (await money.settled(1))[:1]
    stamp = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
    west, east = timezone_of(-5), timezone_of(5)
    later = (stamp + timedelta(seconds=1)).astimezone(west).isoformat()
    earlier = (stamp - timedelta(seconds=1)).astimezone(east).isoformat()
    assert [r["request_id"] for r in (await money.get("/v1/payments/usage", before=later))["usage"]] \
        == [row["request_id"]]
    assert (await money.get("/v1/payments/usage", before=earlier))["usage"] == []


def timezone_of(hours: int) -> Any:
    from datetime import timezone
    return timezone(timedelta(hours=hours))


async def test_paging_usage_by_timestamp_loses_no_row(either: Coordinator) -> None:
    """Usage timestamps were whole seconds while rows are stored to the microsecond: paging with
    ``before`` = the last row's timestamp skipped every row settled earlier in that same second."""
    money = Money(either)

    async def script(reply: Reply) -> None:
        await reply.chunk(chat_body({"role": "assistant", "content": "hello"}))
        await reply.complete(5, 1)

    rows = len(await money.usage())
    async with serving(either, script):
        for _ in range(6):
            assert (await post(either, {"model": MODEL, "messages": HI, "max_tokens": 4})).status_code == 200
        everything = await money.settled(rows + 6)
    assert len(everything) == rows + 6
    paged: list[str] = []
    page = (await money.get("/v1/payments/usage", limit=1))["usage"]
    while page:
        paged.append(page[0]["request_id"])
        page = (await money.get("/v1/payments/usage", limit=1, before=page[0]["timestamp"]))["usage"]
    assert paged == [row["request_id"] for row in everything]


async def test_a_consumer_too_slow_to_read_pays_for_what_it_was_sent(coordinator: Coordinator) -> None:
    """A consumer that stops reading lets the answer pile up in the coordinator until the buffer
    limit cancels it. That was refunded in full like a provider failure, though the consumer caused
    it and had been sent everything up to then; it is charged for that now, and the provider paid."""
    money = Money(coordinator)
    payload = "word " * 20_000  # 100 kB of content per event; the buffer limit is 16 MiB

    async def script(reply: Reply) -> None:
        await reply.chunk(chat_delta(""))
        for _ in range(400):
            await reply.chunk(chat_delta(payload))
        await reply.complete(5, reply.cap)

    rows, earned = len(await money.usage()), await money.earned()
    async with serving(coordinator, script):
        reader, writer = await asyncio.open_connection("127.0.0.1", coordinator.port, limit=2**20)
        body = json.dumps({"model": MODEL, "messages": HI, "max_tokens": 8000, "stream": True}).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (coordinator.api_key.encode(), len(body), body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(8)  # not reading: the answer piles up until the coordinator gives up
        received = b""
        while chunk := await asyncio.wait_for(reader.read(2**20), 30):
            received += chunk
            if b"too slow" in received or len(received) > 64 * 2**20:
                break
        writer.close()
        assert b"too slow" in received
        settled = await money.settled(rows + 1)
    assert len(settled) == rows + 1, "the delivered part was refunded in full"
    assert settled[0]["status"] == "partial" and settled[0]["completion_tokens"] > 1000
    assert await money.earned() == earned + settled[0]["cost_micro_usd"]


async def test_a_huge_prompt_does_not_stall_the_event_loop(coordinator: Coordinator) -> None:
    """A prompt near the 4 MiB body limit is tokenized off the event loop, holding the tokenizer's
    lock for a second or two before it is refused (400, free); a small prompt arriving meanwhile
    was tokenized on the event loop and waited there for that lock, so a client repeating such
    requests froze the coordinator for nothing. Small prompts now leave the loop while the
    tokenizer is busy."""
    big = "the quick brown fox jumps over the lazy dog " * 90_000

    async def small_requests() -> None:
        for _ in range(30):
            await post(coordinator, {"model": MODEL, "messages": HI, "max_tokens": 2})
            await asyncio.sleep(0.05)

    watch = asyncio.create_task(_worst_health_latency(coordinator, 3))
    smalls = asyncio.create_task(small_requests())
    await asyncio.sleep(0.1)
    refused = await post(coordinator, {"model": MODEL, "messages": [{"role": "user", "content": big}],
                                       "max_tokens": 2})
    assert refused.status_code == 400
    worst = await watch
    await smalls
    assert worst < 0.7, f"the event loop stalled for {worst:.1f} s"


# --- 6. Free self-routed requests cannot hold up everyone else's --------------------------------

async def test_a_queued_self_routed_request_does_not_block_paid_ones(tmp_path: Path) -> None:
    """The per-model queue served waiters strictly in order, and a new request never went ahead of
    one already waiting. A self-routed request (free) waiting for its owner's busy machine stood
    at the head and kept every other request for the model waiting behind it, with public
    providers idle, until the queue timeout; its owner could keep one there for nothing, for good.
    A waiter now takes any free slot that no older waiter can use."""
    coordinator = Coordinator(tmp_path, queue_timeout_s=3).start()
    own_token = _cli(["admin", "provider-token", "--account", CONSUMER], coordinator.env)

    async def answer(reply: Reply) -> None:
        await reply.chunk(chat_body({"role": "assistant", "content": "hello"}))
        await reply.complete(5, 1)

    async def hold(reply: Reply) -> None:
        await reply.accepted()
        await reply.cancelled(60)

    public, own = Hostile(coordinator, answer), Hostile(coordinator, hold, token=own_token, slots=1)
    try:
        async with public, own:
            await asyncio.to_thread(coordinator.wait_providers, 2)
            self_route = {"X-Darkbloom-Route": "self"}
            body = {"model": MODEL, "messages": HI, "max_tokens": 4}
            busy = asyncio.create_task(post(coordinator, body, **self_route))  # takes the own slot
            for _ in range(200):
                if own.requests:
                    break
                await asyncio.sleep(0.05)
            waiting = asyncio.create_task(post(coordinator, body, **self_route))  # queues for it
            await asyncio.sleep(0.5)
            started = time.monotonic()
            paid = await post(coordinator, body)
            assert paid.status_code == 200, paid.text
            assert time.monotonic() - started < 2
            busy.cancel()
            waiting.cancel()
            await asyncio.gather(busy, waiting, return_exceptions=True)
    finally:
        coordinator.stop()


# --- 7. A prompt the coordinator cannot count is not billed at the provider's word -------------

async def test_a_blind_prompt_is_not_billed_past_what_its_size_allows(coordinator: Coordinator,
                                                                      money: Money) -> None:
    """Where the coordinator has no count of its own (consumer-blind, or a model whose tokenizer it
    lacks), the provider's prompt figure was capped only by the context length: a provider could
    bill a 10-token prompt as 8 192, within the hold. It is now capped where the excess rule
    already drew the line of plausibility: twice the size estimate, plus 256."""

    async def script(reply: Reply) -> None:
        await reply.chunk("data: " + json.dumps({"sealed": "A" * 64}))
        await reply.complete(8000, 2)

    rows = len(await money.usage())
    async with serving(coordinator, script):
        body = {"model": MODEL, "messages": HI, "max_tokens": 10}
        sealed, _ = seal_to_providers(body, await _listing(coordinator), insecure_accept_self_signed=True)
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.post(f"{coordinator.base_url}/v1/chat/completions", content=sealed,
                                     headers={**money.key, "Content-Type": MEDIA_TYPE})
        assert answer.status_code == 200
        [row] = (await money.settled(rows + 1))[:1]
    estimate = -(-(len(json.loads(sealed)["sealed"][0]["ciphertext"]) * 3 // 4) // 3)
    assert row["prompt_tokens"] <= 2 * estimate + 256 < 8000


@pytest.mark.parametrize(("value", "status"), [("SELF", 503), ("Self", 503), ("", 400),
                                               ("self,self", 400), ("selfish", 400), ("any", 400)])
async def test_route_header_variants(coordinator: Coordinator, value: str, status: int) -> None:
    """Regression: ``X-Darkbloom-Route`` is ``self`` in any case and spacing, or a 400; never a way
    onto other accounts' providers for free. (This consumer has no provider of its own: 503.)"""
    answer = await post(coordinator, {"model": MODEL, "messages": HI, "max_tokens": 4},
                        **{"X-Darkbloom-Route": value})
    assert answer.status_code == status, answer.text
    if status == 503:
        assert answer.json()["error"]["code"] == "no_own_provider"
