"""Dispatcher: sealing requests to a provider and turning its frames into events (protocol.md §6, §9)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable

import pytest

from darkbloom.coordinator.dispatch import Attempt, Dispatcher, Event
from darkbloom.coordinator.routing.cost import Demand
from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.crypto import KeyPair, SealingError, SessionChannel, b64decode, b64encode, public_key_from_b64
from darkbloom.crypto.signing import IdentityKey
from darkbloom.errors import ProviderReported
from darkbloom.protocol import decode
from darkbloom.protocol.frames import (
    COORDINATOR_FRAME_TYPES,
    Cancel,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
    Usage,
    coordinator_frame_adapter,
)
from darkbloom.protocol.trust import Receipt, SignedReceipt

ProviderWithKey = Callable[..., tuple[ProviderConn, KeyPair]]
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class CountingScheduler(Scheduler):
    """A real Scheduler that also counts releases, so "exactly once" is observable."""

    def __init__(self) -> None:
        super().__init__(queue_max=4, queue_timeout_s=1.0)
        self.releases: Counter[str] = Counter()

    def release(self, provider: ProviderConn, demand: Demand) -> None:
        self.releases[provider.id] += 1
        super().release(provider, demand)


class Reply:
    """The provider's side of one attempt's session: seals response chunks at a position."""

    def __init__(self, keys: KeyPair, frame: InferenceRequest, request_id: str | None = None) -> None:
        self.keys = keys
        self.channel = SessionChannel(keys, public_key_from_b64(frame.encrypted_body.ephemeral_public_key),
                                      "provider")
        self.request_id = request_id or frame.request_id

    def seal(self, data: bytes, seq: int = 0) -> dict[str, str]:
        return {"ephemeral_public_key": self.keys.public_b64,
                "ciphertext": self.channel.seal("response", self.request_id, seq, data)}


class Rig:
    """One dispatcher, one provider whose private key the test holds."""

    def __init__(self, provider_with_key: ProviderWithKey, max_concurrency: int = 4) -> None:
        self.scheduler = CountingScheduler()
        self.dispatcher = Dispatcher(self.scheduler)
        self.conn, self.keys = provider_with_key("prov", max_concurrency=max_concurrency)
        self.scheduler.add(self.conn)

    def send(self, body: bytes = BODY, stream: bool = True) -> tuple[Attempt, InferenceRequest, Reply]:
        """Take a slot, dispatch, and return the attempt, the frame the provider got and its reply channel."""
        assert self.scheduler.try_acquire(Demand("m")) is self.conn
        attempt = self.dispatcher.send(self.conn, body, demand=Demand("m"), model="m",
                                       endpoint="/v1/chat/completions",
                                       stream=stream, max_tokens_cap=512)
        frame = self.next_frame()
        assert isinstance(frame, InferenceRequest)
        return attempt, frame, Reply(self.keys, frame)

    def next_frame(self) -> object:
        return decode(self.conn.outbox.get_nowait(), coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)

    def chunk(self, attempt: Attempt, reply: Reply, seq: int, data: bytes) -> None:
        frame = InferenceResponseChunk(request_id=attempt.request_id, seq=seq,
                                       encrypted_data=Sealed(**reply.seal(data, seq)))
        self.dispatcher.handle(self.conn, frame)

    def complete(self, attempt: Attempt) -> None:
        usage = Usage(prompt_tokens=3, completion_tokens=2)
        self.dispatcher.handle(self.conn, InferenceComplete(request_id=attempt.request_id, usage=usage))


def events(attempt: Attempt) -> list[Event]:
    out = []
    while not attempt.events.empty():
        out.append(attempt.events.get_nowait())
    return out


@pytest.fixture
def rig(provider_with_key: ProviderWithKey) -> Rig:
    return Rig(provider_with_key)


# --- send --------------------------------------------------------------------------------


def test_send_queues_a_sealed_request_the_provider_can_open(rig: Rig) -> None:
    attempt, frame, _ = rig.send(stream=False)
    assert frame.request_id == attempt.request_id
    assert (frame.model, frame.endpoint, frame.stream, frame.max_tokens_cap) == (
        "m", "/v1/chat/completions", False, 512)
    assert frame.sealed_by == "coordinator"
    assert frame.encrypted_body.ephemeral_public_key != rig.conn.public_key_b64
    assert BODY not in b64decode(frame.encrypted_body.ciphertext)
    sender = public_key_from_b64(frame.encrypted_body.ephemeral_public_key)
    opened = SessionChannel(rig.keys, sender, "provider").open("request", "", 0,
                                                               frame.encrypted_body.ciphertext)
    assert opened == BODY
    assert rig.dispatcher.pending == {attempt.request_id: attempt}
    assert attempt.provider is rig.conn
    assert rig.conn.outbox.empty()


def test_each_send_gets_fresh_id_and_ephemeral_key(rig: Rig) -> None:
    a1, f1, _ = rig.send()
    a2, f2, _ = rig.send()
    assert a1.request_id != a2.request_id
    assert f1.encrypted_body.ephemeral_public_key != f2.encrypted_body.ephemeral_public_key


def test_other_keys_cannot_open_the_request(rig: Rig) -> None:
    _, frame, _ = rig.send()
    sender = public_key_from_b64(frame.encrypted_body.ephemeral_public_key)
    with pytest.raises(SealingError, match="authentication"):
        SessionChannel(KeyPair.generate(), sender, "provider").open("request", "", 0,
                                                                    frame.encrypted_body.ciphertext)


def test_send_to_closed_provider_fails_and_releases(rig: Rig) -> None:
    assert rig.scheduler.try_acquire(Demand("m")) is rig.conn
    rig.conn.closed = True
    attempt = rig.dispatcher.send(rig.conn, BODY, demand=Demand("m"), model="m",
                                  endpoint="/v1/completions", stream=False, max_tokens_cap=1)
    [event] = events(attempt)
    assert event.kind == "error" and event.error is not None and event.error.status_code == 502
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.in_flight == 0
    assert attempt.done
    assert rig.dispatcher.pending == {}


# --- the happy path ----------------------------------------------------------------------


def test_accepted_chunks_and_complete(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceAccepted(request_id=attempt.request_id))
    rig.chunk(attempt, reply, 0, b'data: {"a":1}')
    rig.chunk(attempt, reply, 1, "data: héllo".encode())
    assert rig.conn.in_flight == 1
    rig.complete(attempt)
    got = events(attempt)
    assert [e.kind for e in got] == ["accepted", "chunk", "chunk", "complete"]
    assert got[1].data == b'data: {"a":1}'
    assert got[2].data == "data: héllo".encode()
    assert got[3].usage == Usage(prompt_tokens=3, completion_tokens=2)
    assert attempt.next_seq == 2
    assert attempt.done
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.in_flight == 0
    assert rig.conn.served == 1
    assert rig.dispatcher.pending == {}


def test_frames_after_complete_are_dropped(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 0, b"data: x")
    rig.complete(attempt)
    events(attempt)
    rig.chunk(attempt, reply, 1, b"data: late")
    rig.complete(attempt)
    rig.dispatcher.handle(rig.conn, InferenceError(request_id=attempt.request_id, error="late"))
    assert events(attempt) == []
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.served == 1


def test_concurrent_attempts_are_independent(rig: Rig) -> None:
    a1, _, r1 = rig.send()
    a2, _, r2 = rig.send()
    rig.chunk(a2, r2, 0, b"two")
    rig.chunk(a1, r1, 0, b"one")
    rig.complete(a1)
    assert [e.data for e in events(a1) if e.kind == "chunk"] == [b"one"]
    assert [e.data for e in events(a2)] == [b"two"]
    assert rig.conn.in_flight == 1
    assert list(rig.dispatcher.pending) == [a2.request_id]


def test_provider_error_is_relayed_and_releases_once(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    frame = InferenceError(request_id=attempt.request_id, error="too long", status_code=400,
                           code="context_length_exceeded", param="messages")
    rig.dispatcher.handle(rig.conn, frame)
    rig.dispatcher.handle(rig.conn, frame)
    [event] = events(attempt)
    assert event.kind == "error" and isinstance(event.error, ProviderReported)
    assert (event.error.status_code, event.error.message, event.error.code, event.error.param) == (
        400, "too long", "context_length_exceeded", "messages")
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.outbox.empty()  # the provider ended it; no cancel is sent back


# --- protocol violations -----------------------------------------------------------------


def assert_violation(rig: Rig, attempt: Attempt, before: int = 0) -> None:
    got = events(attempt)
    assert [e.kind for e in got[:before]] == ["chunk"] * before
    [error] = got[before:]
    assert error.kind == "error" and error.error is not None and error.error.status_code == 502
    assert error.error.message == "invalid provider response"
    assert attempt.done
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.in_flight == 0
    assert attempt.request_id not in rig.dispatcher.pending
    cancel = rig.next_frame()
    assert cancel == Cancel(request_id=attempt.request_id)
    assert rig.conn.outbox.empty()


def test_seq_gap(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 1, b"data: skipped zero")
    assert_violation(rig, attempt)


def test_seq_gap_after_good_chunks(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 0, b"a")
    rig.chunk(attempt, reply, 1, b"b")
    rig.chunk(attempt, reply, 3, b"d")
    assert_violation(rig, attempt, before=2)


def test_repeated_seq(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 0, b"a")
    rig.chunk(attempt, reply, 0, b"a again")
    assert_violation(rig, attempt, before=1)


def test_plaintext_data(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(request_id=attempt.request_id, seq=0,
                                                           data='data: {"plain":true}'))
    assert_violation(rig, attempt)


def test_mixed_plaintext_and_sealed(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(
        request_id=attempt.request_id, seq=0, encrypted_data=Sealed(**reply.seal(b"x")), data="x"))
    assert_violation(rig, attempt)


def test_chunk_with_no_payload(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(request_id=attempt.request_id, seq=0))
    assert_violation(rig, attempt)


def test_wrong_sender_key(rig: Rig) -> None:
    attempt, frame, _ = rig.send()
    impostor = Reply(KeyPair.generate(), frame)
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(
        request_id=attempt.request_id, seq=0, encrypted_data=Sealed(**impostor.seal(b"data: forged"))))
    assert_violation(rig, attempt)


def test_wrong_key_claiming_the_providers_key(rig: Rig) -> None:
    attempt, frame, _ = rig.send()
    impostor = Reply(KeyPair.generate(), frame)
    forged = impostor.seal(b"data: forged")
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(
        request_id=attempt.request_id, seq=0,
        encrypted_data=Sealed(ephemeral_public_key=rig.conn.public_key_b64, ciphertext=forged["ciphertext"])))
    assert_violation(rig, attempt)


def test_tampered_ciphertext(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    sealed = reply.seal(b"data: genuine")
    raw = bytearray(b64decode(sealed["ciphertext"]))
    raw[-1] ^= 0x80
    sealed["ciphertext"] = b64encode(bytes(raw))
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(request_id=attempt.request_id, seq=0,
                                                           encrypted_data=Sealed(**sealed)))
    assert_violation(rig, attempt)


def test_ciphertext_not_base64(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(
        request_id=attempt.request_id, seq=0,
        encrypted_data=Sealed(ephemeral_public_key=rig.conn.public_key_b64, ciphertext="%%not base64%%")))
    assert_violation(rig, attempt)


def test_frames_after_violation_are_dropped(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 5, b"gap")
    assert_violation(rig, attempt)
    rig.chunk(attempt, reply, 0, b"late but valid")
    rig.complete(attempt)
    assert events(attempt) == []
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.served == 0


def test_frames_from_another_provider_are_dropped(rig: Rig, provider_with_key: ProviderWithKey) -> None:
    attempt, frame, _ = rig.send()
    other, other_keys = provider_with_key("other")
    rig.scheduler.add(other)
    reply = Reply(other_keys, frame)
    rig.dispatcher.handle(other, InferenceResponseChunk(request_id=attempt.request_id, seq=0,
                                                        encrypted_data=Sealed(**reply.seal(b"x"))))
    rig.dispatcher.handle(other, InferenceComplete(request_id=attempt.request_id,
                                                   usage=Usage(prompt_tokens=1, completion_tokens=1)))
    assert events(attempt) == []
    assert not attempt.done
    assert sum(rig.scheduler.releases.values()) == 0


def test_frames_for_unknown_ids_are_dropped(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.dispatcher.handle(rig.conn, InferenceAccepted(request_id="no-such-request"))
    rig.dispatcher.handle(rig.conn, InferenceError(request_id="no-such-request", error="x"))
    assert events(attempt) == []
    assert sum(rig.scheduler.releases.values()) == 0


# --- cancel and provider loss ------------------------------------------------------------


def test_cancel_queues_cancel_frame_and_drops_later_frames(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 0, b"first")
    rig.dispatcher.cancel(attempt)
    assert rig.next_frame() == Cancel(request_id=attempt.request_id)
    assert attempt.done
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.in_flight == 0
    assert rig.dispatcher.pending == {}
    rig.chunk(attempt, reply, 1, b"second")
    rig.dispatcher.handle(rig.conn, InferenceError(request_id=attempt.request_id, error="cancelled",
                                                   status_code=499))
    rig.complete(attempt)
    assert [e.kind for e in events(attempt)] == ["chunk"]
    assert rig.conn.served == 0
    rig.dispatcher.cancel(attempt)  # idempotent: no second release, no second frame
    assert rig.scheduler.releases["prov"] == 1
    assert rig.conn.outbox.empty()


def test_cancel_after_complete_is_a_no_op(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.complete(attempt)
    rig.dispatcher.cancel(attempt)
    assert rig.conn.outbox.empty()
    assert rig.scheduler.releases["prov"] == 1


def test_provider_lost_fails_its_pending_attempts(rig: Rig, provider_with_key: ProviderWithKey) -> None:
    a1, _, _ = rig.send()
    a2, _, _ = rig.send()
    other, _ = provider_with_key("other")
    rig.scheduler.add(other)
    assert rig.scheduler.try_acquire(Demand("m"), exclude=frozenset({"prov"})) is other
    a3 = rig.dispatcher.send(other, BODY, demand=Demand("m"), model="m",
                             endpoint="/v1/chat/completions", stream=True, max_tokens_cap=16)
    rig.scheduler.remove(rig.conn)
    rig.dispatcher.provider_lost(rig.conn)
    for attempt in (a1, a2):
        [event] = events(attempt)
        assert event.kind == "error" and event.error is not None
        assert (event.error.status_code, event.error.message) == (502, "provider disconnected")
        assert attempt.done
    assert rig.scheduler.releases == Counter({"prov": 2})
    assert rig.conn.in_flight == 0
    assert list(rig.dispatcher.pending) == [a3.request_id]
    assert events(a3) == []
    rig.dispatcher.provider_lost(rig.conn)  # a second notice changes nothing
    assert rig.scheduler.releases == Counter({"prov": 2})


def test_provider_lost_after_cancel_does_not_release_again(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    rig.dispatcher.cancel(attempt)
    rig.dispatcher.provider_lost(rig.conn)
    assert rig.scheduler.releases["prov"] == 1
    assert events(attempt) == []


# --- sealing binds position, request and direction (issue 8, item 10) ----------------------


def test_a_chunk_moved_to_another_position_does_not_open(rig: Rig) -> None:
    attempt, _, reply = rig.send()
    sealed_for_one = reply.seal(b"data: second", seq=1)
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(request_id=attempt.request_id, seq=0,
                                                           encrypted_data=Sealed(**sealed_for_one)))
    assert_violation(rig, attempt)


def test_a_chunk_of_another_request_does_not_open(rig: Rig) -> None:
    attempt, frame, _ = rig.send()
    elsewhere = Reply(rig.keys, frame, request_id="another-request")
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(
        request_id=attempt.request_id, seq=0, encrypted_data=Sealed(**elsewhere.seal(b"data: x"))))
    assert_violation(rig, attempt)


def test_the_request_reflected_back_as_a_chunk_does_not_open(rig: Rig) -> None:
    attempt, frame, _ = rig.send()
    reflected = Sealed(ephemeral_public_key=rig.conn.public_key_b64,
                       ciphertext=frame.encrypted_body.ciphertext)
    rig.dispatcher.handle(rig.conn, InferenceResponseChunk(request_id=attempt.request_id, seq=0,
                                                           encrypted_data=reflected))
    assert_violation(rig, attempt)


def test_a_provider_cannot_seal_in_the_request_direction() -> None:
    provider, requester = KeyPair.generate(), KeyPair.generate()
    with pytest.raises(SealingError, match="cannot seal"):
        SessionChannel(provider, requester.public, "provider").seal("request", "", 0, b"x")


# --- byte bounds (issue 8, item 5) -----------------------------------------------------------


def test_a_response_over_the_byte_cap_is_a_violation(provider_with_key: ProviderWithKey) -> None:
    rig = Rig(provider_with_key)
    rig.dispatcher.max_response_bytes = 200
    attempt, _, reply = rig.send()
    rig.chunk(attempt, reply, 0, b"a" * 50)
    rig.chunk(attempt, reply, 1, b"b" * 200)
    assert_violation(rig, attempt, before=1)


def test_a_slow_consumer_is_cut_off_by_bytes_not_events(provider_with_key: ProviderWithKey) -> None:
    rig = Rig(provider_with_key)
    rig.dispatcher.max_buffered_bytes = 1000
    attempt, _, reply = rig.send()
    for seq in range(3):
        rig.chunk(attempt, reply, seq, b"x" * 400)
    got = events(attempt)
    assert [e.kind for e in got] == ["chunk", "chunk", "error"]
    assert got[-1].error is not None and "too slow" in got[-1].error.message and attempt.done
    assert rig.next_frame() == Cancel(request_id=attempt.request_id)


async def test_taking_events_frees_the_buffer(provider_with_key: ProviderWithKey) -> None:
    rig = Rig(provider_with_key)
    rig.dispatcher.max_buffered_bytes = 1000
    attempt, _, reply = rig.send()
    for seq in range(5):
        rig.chunk(attempt, reply, seq, b"x" * 400)
        assert (await attempt.next_event(1.0)).kind == "chunk"
    assert not attempt.done and attempt.buffered_bytes == 0


async def test_the_deadline_bounds_every_wait(rig: Rig) -> None:
    attempt, _, _ = rig.send()
    attempt.deadline = 0.0
    with pytest.raises(TimeoutError):
        await attempt.next_event(60.0)


# --- receipts are checked before they are passed on ------------------------------------------


def _signed(rig: Rig, attempt: Attempt, identity: IdentityKey, transcript: bytes, **changes: object
            ) -> SignedReceipt:
    fields: dict[str, object] = dict(
        request_id=attempt.request_id, model="m", endpoint="/v1/chat/completions",
        provider_key=identity.public_b64, encryption_key=rig.conn.public_key_b64, weight_hash=None,
        quantization=None, request_sha256="0" * 64,
        response_sha256=hashlib.sha256(transcript).hexdigest(), prompt_tokens=3,
        completion_tokens=2, created=1)
    fields.update(changes)
    receipt = Receipt.model_validate(fields)
    return SignedReceipt(receipt=receipt, signature=identity.sign(receipt.message()))


@pytest.mark.parametrize("tamper", ["none", "request_id", "provider_key", "hash", "signature"])
def test_receipt_checked_against_the_relayed_bytes(rig: Rig, tamper: str) -> None:
    identity = IdentityKey.generate()
    attempt, _, reply = rig.send(stream=False)
    rig.conn.identity_key = identity.public_b64
    rig.chunk(attempt, reply, 0, b'data: {"a":1}')
    body = b'{"a":1}'
    changes: dict[str, object] = {
        "request_id": {"request_id": "other"}, "hash": {"response_sha256": "1" * 64},
        "provider_key": {"provider_key": IdentityKey.generate().public_b64}}.get(tamper, {})
    signed = _signed(rig, attempt, identity, body, **changes)
    if tamper == "signature":
        forged = IdentityKey.generate().sign(signed.receipt.message())
        signed = signed.model_copy(update={"signature": forged})
    usage = Usage(prompt_tokens=3, completion_tokens=2)
    rig.dispatcher.handle(rig.conn, InferenceComplete(request_id=attempt.request_id, usage=usage,
                                                      receipt=signed))
    complete = events(attempt)[-1]
    assert complete.kind == "complete"
    assert (complete.receipt is not None) == (tamper == "none")
