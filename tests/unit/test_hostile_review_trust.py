"""Hostile review of the trust layer (issue 8): what a hostile coordinator, a hostile provider or
a careless client could get past it, each case found by trying it. Every test here failed before
its fix."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from darkbloom.client.blind import BlindResponseError, open_error, open_response, seal_to_providers
from darkbloom.client.verify import parse_sse, verify_receipt
from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.commit import Committed, Committer
from darkbloom.coordinator.dispatch import Attempt
from darkbloom.coordinator.prepare import Prepared
from darkbloom.coordinator.trust.attestation import verify_blob
from darkbloom.crypto import KeyPair, SealingError, SessionChannel, public_key_from_b64
from darkbloom.crypto.signing import IdentityKey, canonical_json
from darkbloom.errors import ProviderFailed
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol import MalformedFrame, decode
from darkbloom.protocol.blind import CONSUMER_SEALED, sealed_body
from darkbloom.protocol.frames import (
    COORDINATOR_FRAME_TYPES,
    Hardware,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    Sealed,
    Usage,
    coordinator_frame_adapter,
)
from darkbloom.protocol.sse import DONE, Transcript, receipt_comment
from darkbloom.protocol.trust import SignedReceipt, attestation_message
from darkbloom.provider import attestation
from darkbloom.provider.engines.scripted import ScriptedEngine
from darkbloom.provider.receipts import ReceiptWriter
from darkbloom.provider.serving import RequestServer
from tests.unit.conftest import ProviderWithKey
from tests.unit.coordinator.test_dispatch import Reply, Rig, events

MODEL = "scripted-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "q"}]}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def respelled(text: str) -> str:
    """The same bytes in another base64 spelling: the unused low bits of the last data character
    set (decoders ignore them)."""
    body = text.rstrip("=")
    last = _ALPHABET.index(body[-1]) ^ 1
    other = body[:-1] + _ALPHABET[last] + text[len(body):]
    assert other != text and base64.b64decode(other, validate=True) == base64.b64decode(text)
    return other


# --- one spelling per key ------------------------------------------------------------------


def test_an_x25519_key_has_one_base64_spelling() -> None:
    key = KeyPair.generate().public_b64
    assert bytes(public_key_from_b64(key)) == base64.b64decode(key)
    with pytest.raises(SealingError):
        public_key_from_b64(respelled(key))


@pytest.mark.parametrize("hex_key", [
    "00" * 31 + "80", "01" + "00" * 30 + "80",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "ecff" + "ff" * 30, "edff" + "ff" * 30])
def test_low_order_keys_with_the_top_bit_set_are_refused(hex_key: str) -> None:
    """X25519 ignores the top bit, so these are the low-order points again (regression guard:
    these were refused already; the probe must not become a list of known encodings)."""
    with pytest.raises(SealingError, match="low-order"):
        public_key_from_b64(base64.b64encode(bytes.fromhex(hex_key)).decode())


class _Rig:
    """A provider's RequestServer on the scripted engine, recording what it sends."""

    def __init__(self, engine: ScriptedEngine | None = None) -> None:
        self.keys = KeyPair.generate()
        self.frames: list[BaseModel] = []

        async def send(frame: BaseModel) -> None:
            self.frames.append(frame)

        self.server = RequestServer(engine or ScriptedEngine(["a", "b"]), self.keys, send)

    async def serve(self, body: bytes, rid: str = "r", session: KeyPair | None = None,
                    spelled: str | None = None, blind: bool = True) -> SessionChannel:
        session = session or KeyPair.generate()
        channel = SessionChannel(session, self.keys.public, "requester")
        sealed = Sealed(ephemeral_public_key=spelled or session.public_b64,
                        ciphertext=channel.seal("request", CONSUMER_SEALED if blind else "", 0, body))
        self.frames.clear()
        await self.server.serve(InferenceRequest(
            request_id=rid, encrypted_body=sealed, model=MODEL, endpoint="/v1/chat/completions",
            stream=False, max_tokens_cap=10, sealed_by="consumer" if blind else "coordinator"),
            threading.Event())
        return channel


async def test_a_replay_cannot_pass_the_guard_by_respelling_its_key() -> None:
    """The replay guard remembered the key's text: a coordinator replayed a consumer's envelope
    with the key's base64 respelled, and the provider served it a second time."""
    rig = _Rig()
    session = KeyPair.generate()
    await rig.serve(json.dumps(CHAT).encode(), session=session)
    assert isinstance(rig.frames[-1], InferenceComplete)
    await rig.serve(json.dumps(CHAT).encode(), rid="again", session=session,
                    spelled=respelled(session.public_b64))
    assert not any(isinstance(f, InferenceAccepted) for f in rig.frames)
    [refused] = rig.frames
    assert isinstance(refused, InferenceError) and refused.status_code in (400, 409)


async def test_a_refused_envelope_is_remembered_too() -> None:
    """An envelope that opened but whose body was refused was not remembered, so it could be
    replayed at will (each replay parsed again and answered again)."""
    rig = _Rig()
    session = KeyPair.generate()
    body = json.dumps({**CHAT, "nope": 1}).encode()
    await rig.serve(body, session=session)
    [first] = rig.frames
    assert isinstance(first, InferenceError) and first.code == "unknown_parameter"
    await rig.serve(body, rid="again", session=session)
    [again] = rig.frames
    assert isinstance(again, InferenceError) and again.status_code == 409


def _signed_blob(identity: IdentityKey, keys: KeyPair, public_key: str) -> dict[str, Any]:
    inner = {**json.loads(base64.b64decode(attestation.build(
        identity, keys.public_b64, Hardware(), "llama.cpp")["attestation_raw"])), "publicKey": public_key}
    raw = canonical_json(inner)
    return {"attestation_raw": base64.b64encode(raw).decode(),
            "signature": identity.sign(attestation_message(raw))}


def test_an_identity_key_has_one_spelling() -> None:
    """Quarantine and "one live session per identity key" are keyed by the key's text: a
    quarantined provider came back at once by writing its key in another spelling (the 65-byte
    SEC1 form, or respelled base64), which its own signature then vouched for."""
    identity, keys = IdentityKey.generate(), KeyPair.generate()
    raw = base64.b64decode(identity.public_b64)
    assert verify_blob(_signed_blob(identity, keys, identity.public_b64), keys.public_b64).level \
        == "self_signed"
    for other in (base64.b64encode(b"\x04" + raw).decode(), respelled(identity.public_b64)):
        verdict = verify_blob(_signed_blob(identity, keys, other), keys.public_b64)
        assert verdict.level == "none" and verdict.identity_key is None


def test_a_blob_is_its_canonical_json() -> None:
    """The signed bytes must be the canonical JSON docs/security.md names, so every verifier,
    whatever its JSON parser, reads the same blob (no duplicate keys, no other spellings)."""
    identity, keys = IdentityKey.generate(), KeyPair.generate()
    good = json.loads(base64.b64decode(_signed_blob(identity, keys, identity.public_b64)["attestation_raw"]))
    spare = KeyPair.generate().public_b64
    for raw in (
        f'{{"encryptionPublicKey":"{spare}",'.encode() + canonical_json(good)[1:],  # duplicate key
        json.dumps(good, sort_keys=True).encode(),  # whitespace
        canonical_json({**good, "coreDumpsDisabled": 1}),  # a number where a bool belongs
    ):
        blob = {"attestation_raw": base64.b64encode(raw).decode(),
                "signature": identity.sign(attestation_message(raw))}
        assert verify_blob(blob, keys.public_b64).level == "none", raw


# --- the provider always answers -------------------------------------------------------------


async def test_a_blind_refusal_with_long_words_is_still_sent() -> None:
    """The sealed words of a refusal can quote the request: a 20,000-character unknown key made
    the sealed message too long for the frame model, so the provider raised instead of answering
    and the coordinator waited out its timeout on every provider in turn."""
    rig = _Rig()
    channel = await rig.serve(json.dumps({**CHAT, "k" * 20_000: 1}).encode())
    [refused] = rig.frames
    assert isinstance(refused, InferenceError) and refused.code == "unknown_parameter"
    assert refused.sealed_message is not None
    words = json.loads(channel.open("error", "r", 0, refused.sealed_message))
    assert words["message"] and len(words["param"]) <= 256


class _Broken(ScriptedEngine):
    def serves(self, model: str) -> bool:
        raise RuntimeError("unexpected")


async def test_an_unexpected_failure_before_generation_is_answered() -> None:
    rig = _Rig(_Broken(["a"]))
    await rig.serve(json.dumps(CHAT).encode(), blind=False)
    [failed] = rig.frames
    assert isinstance(failed, InferenceError) and failed.status_code == 500


def test_a_request_id_too_long_to_seal_under_is_a_malformed_frame() -> None:
    """The provider accepted ids it cannot seal or sign under (sealing allows 128 characters):
    it sent inference_accepted, then its task died and the request hung."""
    frame = InferenceRequest(request_id="r", encrypted_body=Sealed(ephemeral_public_key="k", ciphertext="c"),
                             model=MODEL, endpoint="/v1/chat/completions", stream=False, max_tokens_cap=1)
    wire = {**json.loads(frame.model_dump_json()), "request_id": "x" * 300}
    with pytest.raises(MalformedFrame):
        decode(json.dumps(wire), coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)


# --- the coordinator checks the receipt a stream carries ------------------------------------


def _receipt(rig: Rig, attempt: Attempt, identity: IdentityKey, events_: list[bytes], stream: bool = True,
             **changes: object) -> SignedReceipt:
    writer = ReceiptWriter(identity, request_id=attempt.request_id, model="m",
                           endpoint="/v1/chat/completions", encryption_key=rig.conn.public_key_b64,
                           weight_hash=None, quantization=None, request_body=b"", stream=stream)
    for event in events_:
        writer.add(event.decode())
    signed = writer.sign(3, 2)
    if changes:
        receipt = signed.receipt.model_copy(update=changes)
        signed = SignedReceipt(receipt=receipt, signature=identity.sign(receipt.message()))
    return signed


def _stream(rig: Rig, attempt: Attempt, reply: Reply, payloads: list[bytes]) -> None:
    for seq, payload in enumerate(payloads):
        rig.chunk(attempt, reply, seq, payload)


def _complete(rig: Rig, attempt: Attempt, signed: SignedReceipt | None) -> None:
    rig.dispatcher.handle(rig.conn, InferenceComplete(
        request_id=attempt.request_id, usage=Usage(prompt_tokens=3, completion_tokens=2), receipt=signed))


DATA = [b'data: {"a":1}', b'data: {"b":2}']


def test_a_genuine_streamed_receipt_passes(provider_with_key: ProviderWithKey) -> None:
    rig, identity = Rig(provider_with_key), IdentityKey.generate()
    attempt, _, reply = rig.send(stream=True)
    rig.conn.identity_key = identity.public_b64
    signed = _receipt(rig, attempt, identity, DATA)
    _stream(rig, attempt, reply, [*DATA, receipt_comment(signed).encode(), DONE.encode()])
    _complete(rig, attempt, signed)
    got = events(attempt)
    assert [e.kind for e in got] == ["chunk"] * 4 + ["complete"] and got[-1].receipt == signed


@pytest.mark.parametrize("forgery", ["other request", "short hash", "unattested provider"])
def test_a_streamed_receipt_that_does_not_hold_is_not_relayed(
        provider_with_key: ProviderWithKey, forgery: str) -> None:
    """Only inference_complete's copy was checked: the comment line the consumer keeps (and
    `darkbloom verify` reads) was relayed whatever it said."""
    rig, identity = Rig(provider_with_key), IdentityKey.generate()
    attempt, _, reply = rig.send(stream=True)
    rig.conn.identity_key = None if forgery == "unattested provider" else identity.public_b64
    good = _receipt(rig, attempt, identity, DATA)
    in_stream = {"other request": _receipt(rig, attempt, identity, DATA, request_id="another"),
                 "short hash": _receipt(rig, attempt, identity, DATA[:1])}.get(forgery, good)
    _stream(rig, attempt, reply, [*DATA, receipt_comment(in_stream).encode(), DONE.encode()])
    _complete(rig, attempt, good)
    got = events(attempt)
    assert [e.data for e in got if e.kind == "chunk"] == [*DATA, DONE.encode()]
    assert got[-1].kind == "complete" and got[-1].receipt is None


def test_nothing_but_done_follows_a_streamed_receipt(provider_with_key: ProviderWithKey) -> None:
    rig, identity = Rig(provider_with_key), IdentityKey.generate()
    attempt, _, reply = rig.send(stream=True)
    rig.conn.identity_key = identity.public_b64
    signed = _receipt(rig, attempt, identity, DATA)
    _stream(rig, attempt, reply, [*DATA, receipt_comment(signed).encode(), b'data: {"c":3}'])
    got = events(attempt)
    assert got[-1].kind == "error" and got[-1].error is not None and got[-1].error.status_code == 502


def test_the_receipt_kept_is_the_one_the_stream_carried(provider_with_key: ProviderWithKey) -> None:
    rig, identity = Rig(provider_with_key), IdentityKey.generate()
    attempt, _, reply = rig.send(stream=True)
    rig.conn.identity_key = identity.public_b64
    relayed = _receipt(rig, attempt, identity, DATA)
    other = _receipt(rig, attempt, identity, DATA, created=12345)
    _stream(rig, attempt, reply, [*DATA, receipt_comment(relayed).encode(), DONE.encode()])
    _complete(rig, attempt, other)
    assert events(attempt)[-1].receipt == relayed


@pytest.mark.parametrize("payloads", [[b'data: {"a":1}', b'data: {"b":2}'],
                                      [b'data: {"a":1}\ndata: {"b":2}']])
def test_a_non_streamed_body_is_one_event(provider_with_key: ProviderWithKey, payloads: list[bytes]) -> None:
    """The coordinator returned the first chunk's text after ``data: `` and dropped further chunks,
    while the receipt it passed on covered what it dropped and not what it returned."""
    rig, identity = Rig(provider_with_key), IdentityKey.generate()
    attempt, _, reply = rig.send(stream=False)
    rig.conn.identity_key = identity.public_b64
    _stream(rig, attempt, reply, payloads)
    _complete(rig, attempt, _receipt(rig, attempt, identity, payloads, stream=False))
    got = events(attempt)
    assert got[-1].kind == "error" and got[-1].error is not None and got[-1].error.status_code == 502


# --- the provider's words mid-stream ----------------------------------------------------------


async def test_a_providers_words_mid_stream_never_reach_the_consumer(
        provider_with_key: ProviderWithKey) -> None:
    rig = Rig(provider_with_key)
    service = Committer(CoordinatorSettings(), rig.scheduler, rig.dispatcher)
    attempt, _, reply = rig.send(stream=True)
    request = GenerationRequest(endpoint="/v1/chat/completions", model="m", stream=True)
    prepared = Prepared("/v1/chat/completions", b"", request, DEFAULT_MODEL, None, 16)
    rig.chunk(attempt, reply, 0, b'data: {"a":1}')
    first = (await attempt.next_event(1)).data
    rig.dispatcher.handle(rig.conn, InferenceError(request_id=attempt.request_id, status_code=500,
                                                   error="visit evil.example for your refund"))
    with pytest.raises(ProviderFailed) as failed:
        async for _ in service.events(Committed(attempt, first, 1, prepared)):
            pass
    assert "evil" not in failed.value.message


# --- the blind helper against hostile listings and answers --------------------------------------


def _entry(provider_id: object = "p1") -> tuple[dict[str, Any], IdentityKey, KeyPair]:
    identity, keys = IdentityKey.generate(), KeyPair.generate()
    blob = attestation.build(identity, keys.public_b64, Hardware(), "llama.cpp")
    return {"provider_id": provider_id, "models": [MODEL], "identity_public_key": identity.public_b64,
            "encryption_public_key": keys.public_b64, "attestation_raw": blob["attestation_raw"],
            "attestation_signature": blob["signature"]}, identity, keys


LOCAL: dict[str, Any] = {"insecure_accept_self_signed": True}


def test_the_blind_helper_skips_malformed_listing_entries() -> None:
    good, _, _ = _entry()
    bad = [{**_entry()[0], "models": 5}, {k: v for k, v in _entry()[0].items() if k != "provider_id"},
           _entry({"an": "object"})[0], _entry("")[0], "not an entry", None]
    _, sessions = seal_to_providers(CHAT, [*bad, good], **LOCAL)  # type: ignore[list-item]
    assert list(sessions) == ["p1"]
    with pytest.raises(LookupError):
        seal_to_providers(CHAT, bad, **LOCAL)  # type: ignore[arg-type]


def test_the_blind_helper_seals_once_per_provider_id() -> None:
    """Two entries under one id left the sessions map pointing at the second while the envelope
    carried both."""
    first, second = _entry("p1")[0], _entry("p1")[0]
    envelope, sessions = seal_to_providers(CHAT, [first, second], **LOCAL)
    sealed = json.loads(envelope)["sealed"]
    assert [s["provider_id"] for s in sealed] == ["p1"]
    assert sealed[0]["encryption_public_key"] == sessions["p1"].encryption_key


def _blind_answer(payloads: list[str], stream: bool = False, rid: str = "job-1"
                  ) -> tuple[dict[str, Any], str]:
    """A provider's answer to a consumer-blind request, signed by it, as the coordinator relays it."""
    entry, identity, keys = _entry()
    body = {**CHAT, "stream": stream}
    _, sessions = seal_to_providers(body, [entry], **LOCAL)
    session = sessions["p1"]
    writer = ReceiptWriter(identity, request_id=rid, model=MODEL, endpoint="/v1/chat/completions",
                           encryption_key=keys.public_b64, weight_hash=None, quantization=None,
                           request_body=json.dumps(body).encode(), stream=stream)
    for payload in payloads:
        writer.add(payload)
    provider = SessionChannel(keys, public_key_from_b64(session.channel.sender_public_b64), "provider")
    chunks = [provider.seal("response", rid, seq, p.encode())
              for seq, p in enumerate([*payloads, receipt_comment(writer.sign(1, 1))])]
    return sessions, sealed_body(rid, chunks).decode()


def test_a_blind_non_streamed_answer_is_one_body_and_its_receipt() -> None:
    sessions, text = _blind_answer(['data: {"a":1}'])
    assert open_response(sessions, "p1", text, stream=False)[0] == 'data: {"a":1}'
    sessions, text = _blind_answer(['data: {"a":1}', 'data: {"b":2}'])
    with pytest.raises(BlindResponseError):
        open_response(sessions, "p1", text, stream=False)


def test_hostile_blind_answers_raise_the_helpers_error() -> None:
    sessions, _ = _blind_answer(['data: {"a":1}'])
    deep = "data: {" + '"a":' * 0 + '"x":' + "[" * 100_000
    for text, stream in ((deep, True), ("[" * 100_000, False)):
        with pytest.raises(BlindResponseError):
            open_response(sessions, "p1", text, stream=stream)
    for error in ({}, {"error": []}, {"error": {"sealed": {"request_id": 5}}}, "text"):
        with pytest.raises(BlindResponseError):
            open_error(sessions, error)  # type: ignore[arg-type]


def test_verify_skips_malformed_listing_entries() -> None:
    entry, identity, keys = _entry()
    writer = ReceiptWriter(identity, request_id="r", model=MODEL, endpoint="/v1/chat/completions",
                           encryption_key=keys.public_b64, weight_hash=None, quantization=None,
                           request_body=b"", stream=False)
    signed = writer.sign(1, 1)
    steps = verify_receipt(signed.receipt.model_dump(), signed.signature, b"",
                           ["junk", None, entry])
    assert all(step.ok for step in steps), steps


# --- the transcript rule on the consumer's side ---------------------------------------------------


def test_a_saved_stream_splits_on_sse_line_ends_only() -> None:
    """`darkbloom verify` split a saved stream with str.splitlines, which also breaks at U+2028,
    U+2029 and U+0085: characters the provider's JSON carries unescaped. A genuine answer with
    one of them failed verification."""
    events_ = ["data: " + json.dumps({"c": "a\u2028b\u2029c\x85d"}, ensure_ascii=False), DONE]
    transcript = Transcript(stream=True)
    for event in events_:
        transcript.add(event)
    saved, _, _ = parse_sse("\n\n".join(events_) + "\n\n")
    assert hashlib.sha256(saved).hexdigest() == transcript.hexdigest()


NAMED = ['event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}',
         'event: message_stop\ndata: {"type":"message_stop"}']


@pytest.mark.parametrize("tamper", ["data without a space", "event renamed", "event name dropped",
                                    "carriage return", "two data lines"])
def test_a_saved_stream_with_lines_its_receipt_does_not_cover_does_not_verify(tamper: str) -> None:
    """The transcript rule covers `data: ` payloads only, and verify read nothing else: a
    coordinator could add `data:{...}` events (SSE clients read them), rename or drop `event:`
    names (SDKs then skip the event) or split lines with CR, and the receipt still verified."""
    identity, keys = IdentityKey.generate(), KeyPair.generate()
    writer = ReceiptWriter(identity, request_id="r", model=MODEL, endpoint="/v1/messages",
                           encryption_key=keys.public_b64, weight_hash=None, quantization=None,
                           request_body=b"", stream=True)
    for event in NAMED:
        writer.add(event)
    comment = receipt_comment(writer.sign(1, 1))
    saved, receipt, _ = parse_sse("\n\n".join([*NAMED, comment]) + "\n\n")
    assert receipt is not None and hashlib.sha256(saved).hexdigest() == receipt["response_sha256"]
    first = {"data without a space": NAMED[0] + '\n\ndata:{"injected":1}',
             "event renamed": NAMED[0].replace("event: content_block_delta", "event: skipped"),
             "event name dropped": NAMED[0].split("\n")[1],
             "carriage return": NAMED[0] + '\rdata: {"injected":1}',
             "two data lines": NAMED[0] + '\ndata: {"injected":1}'}[tamper]
    with pytest.raises(ValueError, match="receipt cannot cover"):
        parse_sse("\n\n".join([first, NAMED[1], comment]) + "\n\n")


# --- who sealed the body ------------------------------------------------------------------------


async def test_a_consumer_sealed_body_does_not_open_as_a_coordinator_sealed_one() -> None:
    """``sealed_by`` is the coordinator's word: relabelled "coordinator", a consumer's envelope
    skipped the replay guard, and its refusal's words (which quote the request) and its receipt
    came back in the clear."""
    rig = _Rig()
    entry = {"provider_id": "p1", "models": [MODEL], "identity_public_key": rig.server.identity.public_b64,
             "encryption_public_key": rig.keys.public_b64}
    blob = attestation.build(rig.server.identity, rig.keys.public_b64, Hardware(), "llama.cpp")
    entry.update(attestation_raw=blob["attestation_raw"], attestation_signature=blob["signature"])
    secret = "okapi_secret_field"
    envelope, _ = seal_to_providers({**CHAT, secret: 1}, [entry], **LOCAL)
    sealed = Sealed(**{k: v for k, v in json.loads(envelope)["sealed"][0].items()
                       if k in ("ephemeral_public_key", "ciphertext")})
    for rid in ("r1", "r2"):
        await rig.server.serve(InferenceRequest(
            request_id=rid, encrypted_body=sealed, model=MODEL, endpoint="/v1/chat/completions",
            stream=False, max_tokens_cap=10, sealed_by="coordinator"), threading.Event())
    assert not any(isinstance(f, InferenceAccepted) for f in rig.frames)
    assert all(secret not in f.model_dump_json() for f in rig.frames)
    assert [f.status_code for f in rig.frames if isinstance(f, InferenceError)] == [400, 400]
