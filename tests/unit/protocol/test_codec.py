"""Frame encoding/decoding and the outcomes protocol.md names for bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from darkbloom.protocol import MalformedFrame, UnknownFrame, decode, encode
from darkbloom.protocol.frames import (
    CLOSE_POLICY,
    CLOSE_UNSUPPORTED_VERSION,
    CLOSE_VERSION_TOO_OLD,
    COORDINATOR_FRAME_TYPES,
    MAX_BATCH_FRAMES,
    PROTOCOL_VERSION,
    PROVIDER_FRAME_TYPES,
    AttestationChallenge,
    AttestationResponse,
    Cancel,
    FrameBatch,
    Heartbeat,
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Register,
    Registered,
    Sealed,
    TrustUpdate,
    coordinator_frame_adapter,
    provider_frame_adapter,
)

CANARY = "CANARY-7f3a9c"
SEALED = {"ephemeral_public_key": "AAAA", "ciphertext": "BBBB"}


def from_provider(payload: Any) -> Any:
    text = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    return decode(text, provider_frame_adapter, PROVIDER_FRAME_TYPES)


def from_coordinator(payload: Any) -> Any:
    text = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    return decode(text, coordinator_frame_adapter, COORDINATOR_FRAME_TYPES)


def malformed_from_provider(payload: Any) -> MalformedFrame:
    with pytest.raises(MalformedFrame) as info:
        from_provider(payload)
    assert CANARY not in info.value.reason
    assert CANARY not in str(info.value)
    return info.value


def test_frame_type_sets() -> None:
    assert PROVIDER_FRAME_TYPES == {"register", "heartbeat", "inference_accepted", "inference_response_chunk",
                                    "inference_complete", "inference_error", "attestation_response",
                                    "frame_batch"}
    assert COORDINATOR_FRAME_TYPES == {"registered", "inference_request", "cancel",
                                       "attestation_challenge", "trust_update", "runtime_status"}


# --- decoding each frame type ------------------------------------------------------------


PROVIDER_FRAMES: list[tuple[dict[str, Any], type[BaseModel]]] = [
    ({"type": "register", "public_key": "k", "models": [{"id": "m", "context_length": 4096}],
      "hardware": {"chip_name": "M3", "cpu_cores": {"total": 8}}, "max_concurrency": 2}, Register),
    ({"type": "heartbeat", "status": "serving", "warm_models": ["m"],
      "backend_capacity": {"slots": [{"model": "m", "num_running": 1}]}}, Heartbeat),
    ({"type": "inference_accepted", "request_id": "r1"}, InferenceAccepted),
    ({"type": "inference_response_chunk", "request_id": "r1", "seq": 0, "encrypted_data": SEALED},
     InferenceResponseChunk),
    ({"type": "inference_complete", "request_id": "r1",
      "usage": {"prompt_tokens": 3, "completion_tokens": 5}, "finish_reason": "stop"}, InferenceComplete),
    ({"type": "inference_error", "request_id": "r1", "error": "boom", "status_code": 400,
      "code": "context_length_exceeded", "param": "messages"}, InferenceError),
    ({"type": "attestation_response", "nonce": "n", "signature": "s", "public_key": "k"},
     AttestationResponse),
]

COORDINATOR_FRAMES: list[tuple[dict[str, Any], type[BaseModel]]] = [
    ({"type": "registered", "provider_id": "p", "accepted_models": ["m"],
      "rejected_models": [{"id": "x", "reason": "unknown"}]}, Registered),
    ({"type": "inference_request", "request_id": "r1", "encrypted_body": SEALED, "model": "m",
      "endpoint": "/v1/chat/completions", "stream": True, "max_tokens_cap": 8192}, InferenceRequest),
    ({"type": "cancel", "request_id": "r1"}, Cancel),
    ({"type": "attestation_challenge", "nonce": "n", "timestamp": "2024-01-01T00:00:00Z"},
     AttestationChallenge),
    ({"type": "trust_update", "trust_level": "none", "routable": False}, TrustUpdate),
]


@pytest.mark.parametrize(("payload", "cls"), PROVIDER_FRAMES, ids=lambda v: getattr(v, "__name__", ""))
def test_decode_provider_frames(payload: dict[str, Any], cls: type[BaseModel]) -> None:
    frame: Any = from_provider(payload)
    assert frame.type == payload["type"]
    assert frame.v == PROTOCOL_VERSION
    assert type(frame) is cls
    assert from_provider(encode(frame)) == frame


@pytest.mark.parametrize(("payload", "cls"), COORDINATOR_FRAMES, ids=lambda v: getattr(v, "__name__", ""))
def test_decode_coordinator_frames(payload: dict[str, Any], cls: type[BaseModel]) -> None:
    frame: Any = from_coordinator(payload)
    assert frame.type == payload["type"]
    assert type(frame) is cls
    assert from_coordinator(encode(frame)) == frame


def test_decoded_fields() -> None:
    chunk = from_provider({"type": "inference_response_chunk", "request_id": "r1", "seq": 3,
                           "encrypted_data": SEALED})
    assert (chunk.request_id, chunk.seq, chunk.data) == ("r1", 3, None)
    assert chunk.encrypted_data == Sealed(**SEALED)
    complete = from_provider({"type": "inference_complete", "request_id": "r1",
                              "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert (complete.usage.prompt_tokens, complete.usage.completion_tokens) == (3, 5)
    error = from_provider({"type": "inference_error", "request_id": "r1", "error": "x"})
    assert (error.status_code, error.code, error.param) == (500, None, None)


def test_decode_accepts_bytes() -> None:
    frame = from_provider(b'{"type": "inference_accepted", "request_id": "r1"}')
    assert isinstance(frame, InferenceAccepted)


def test_unknown_fields_are_ignored() -> None:
    frame = from_provider({"type": "inference_accepted", "request_id": "r1", "future_field": {"a": 1}})
    assert frame == InferenceAccepted(request_id="r1")


# --- unknown types -----------------------------------------------------------------------


def test_unknown_type_is_unknown_frame() -> None:
    assert from_provider({"type": "telemetry", "whatever": 1}) == UnknownFrame("telemetry")


def test_other_sides_frame_type_is_unknown() -> None:
    assert from_provider({"type": "cancel", "request_id": "r"}) == UnknownFrame("cancel")
    assert from_coordinator({"type": "heartbeat"}) == UnknownFrame("heartbeat")


def test_unknown_type_is_truncated() -> None:
    assert from_provider({"type": "x" * 1000}) == UnknownFrame("x" * 64)


def test_unknown_type_with_invalid_fields_is_still_unknown() -> None:
    assert from_provider({"type": "telemetry", "seq": "nope"}) == UnknownFrame("telemetry")


# --- malformed frames --------------------------------------------------------------------


@pytest.mark.parametrize("text", [f"{CANARY}", f'{{"type": "{CANARY}"', "", f"{{'a': '{CANARY}'}}"])
def test_non_json(text: str) -> None:
    err = malformed_from_provider(text)
    assert err.close_code == CLOSE_POLICY
    assert "JSON" in err.reason


def test_invalid_utf8_bytes() -> None:
    err = malformed_from_provider(b'{"type": "\xff\xfe"}')
    assert err.close_code == CLOSE_POLICY


@pytest.mark.parametrize("payload", [[CANARY], CANARY, 5, None, True])
def test_non_object(payload: Any) -> None:
    err = malformed_from_provider(json.dumps(payload))
    assert err.close_code == CLOSE_POLICY
    assert "object" in err.reason


@pytest.mark.parametrize("payload", [{"request_id": CANARY}, {"type": 5, "request_id": CANARY},
                                     {"type": None}, {"type": [CANARY]}])
def test_missing_or_non_string_type(payload: dict[str, Any]) -> None:
    err = malformed_from_provider(payload)
    assert err.close_code == CLOSE_POLICY
    assert "type" in err.reason


@pytest.mark.parametrize(("payload", "field"), [
    ({"type": "inference_response_chunk", "request_id": "r", "seq": CANARY}, "seq"),
    ({"type": "inference_response_chunk", "seq": 0, "data": CANARY}, "request_id"),
    ({"type": "inference_response_chunk", "request_id": "r", "seq": 0,
      "encrypted_data": {"ephemeral_public_key": CANARY}}, "encrypted_data.ciphertext"),
    ({"type": "inference_complete", "request_id": CANARY, "usage": {"prompt_tokens": -1,
                                                                    "completion_tokens": 0}},
     "usage.prompt_tokens"),
    ({"type": "inference_complete", "request_id": CANARY}, "usage"),
    ({"type": "inference_error", "request_id": "r", "error": CANARY, "status_code": CANARY}, "status_code"),
    ({"type": "heartbeat", "status": CANARY}, "status"),
    ({"type": "register", "hardware": {"accelerator": CANARY}}, "hardware.accelerator"),
    ({"type": "register", "models": [{"id": "m", "size_bytes": CANARY}]}, "models.0.size_bytes"),
    ({"type": "inference_accepted", "request_id": ["r", CANARY]}, "request_id"),
])
def test_bad_field_reason_names_field_not_value(payload: dict[str, Any], field: str) -> None:
    err = malformed_from_provider(payload)
    assert err.close_code == CLOSE_POLICY
    assert err.reason.startswith(f"invalid {payload['type']} frame")
    assert field in err.reason


@pytest.mark.parametrize(("payload", "field"), [
    ({"type": "inference_request", "request_id": "r", "encrypted_body": SEALED, "model": CANARY,
      "endpoint": f"/v1/{CANARY}", "stream": True, "max_tokens_cap": 1}, "endpoint"),
    ({"type": "inference_request", "request_id": "r", "encrypted_body": SEALED, "model": CANARY,
      "endpoint": "/v1/completions", "stream": True, "max_tokens_cap": 0}, "max_tokens_cap"),
    ({"type": "registered", "trust_level": CANARY}, "provider_id"),
])
def test_bad_coordinator_field_reason(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        from_coordinator(payload)
    assert field in info.value.reason
    assert CANARY not in info.value.reason


def test_bad_dict_value_reason_does_not_contain_dict_key() -> None:
    malformed_from_provider({"type": "register", "privacy_capabilities": {CANARY: "not-a-bool"}})


def test_deeply_nested_json_is_malformed() -> None:
    malformed_from_provider("[" * 100_000)


# --- protocol version --------------------------------------------------------------------


def test_missing_v_is_read_as_current() -> None:
    frame = from_provider({"type": "inference_accepted", "request_id": "r"})
    assert frame.v == PROTOCOL_VERSION == 2


def test_explicit_v_two() -> None:
    assert from_provider({"v": 2, "type": "inference_accepted", "request_id": "r"}).v == 2


@pytest.mark.parametrize("v", [0, 1])
def test_older_versions_close_4003(v: int) -> None:
    """v1 signed without domain separation and sealed chunks unbound: it is refused."""
    err = malformed_from_provider({"v": v, "type": "register"})
    assert err.close_code == CLOSE_VERSION_TOO_OLD == 4003


@pytest.mark.parametrize("v", [3, 99])
def test_higher_version_closes_4400(v: int) -> None:
    err = malformed_from_provider({"v": v, "type": "inference_accepted", "request_id": CANARY})
    assert err.close_code == CLOSE_UNSUPPORTED_VERSION == 4400


def test_higher_version_closes_4400_even_for_unknown_type() -> None:
    err = malformed_from_provider({"v": 3, "type": "brand_new"})
    assert err.close_code == 4400


def test_higher_version_on_coordinator_side() -> None:
    with pytest.raises(MalformedFrame) as info:
        from_coordinator({"v": 3, "type": "cancel", "request_id": "r"})
    assert info.value.close_code == 4400


@pytest.mark.parametrize("v", ["1", 1.0, True, None, [1]])
def test_non_integer_v(v: Any) -> None:
    err = malformed_from_provider({"v": v, "type": "inference_accepted", "request_id": CANARY})
    assert err.close_code == CLOSE_POLICY
    assert "'v'" in err.reason


# --- encoding ----------------------------------------------------------------------------


def test_encode_drops_none_fields() -> None:
    chunk = InferenceResponseChunk(request_id="r", seq=0, encrypted_data=Sealed(**SEALED))
    assert json.loads(encode(chunk)) == {"v": 2, "type": "inference_response_chunk", "request_id": "r",
                                         "seq": 0, "encrypted_data": SEALED}
    error = json.loads(encode(InferenceError(request_id="r", error="boom")))
    assert error == {"v": 2, "type": "inference_error", "request_id": "r", "error": "boom",
                     "status_code": 500}
    register = json.loads(encode(Register(public_key="k")))
    for absent in ("attestation", "certificate_chain", "auth_token", "max_concurrency", "prefill_tps"):
        assert absent not in register
    assert "accelerator" not in register["hardware"]


def test_encode_keeps_falsy_non_none_fields() -> None:
    frame = json.loads(encode(TrustUpdate(trust_level="none", routable=False)))
    assert frame == {"v": 2, "type": "trust_update", "trust_level": "none", "routable": False, "reason": ""}


def test_encode_is_compact_json() -> None:
    assert encode(Cancel(request_id="r")) == '{"v":2,"type":"cancel","request_id":"r"}'


# --- receipts are typed on the wire (issue 8, item 9) ---------------------------------------


def _receipt(**changes: Any) -> dict[str, Any]:
    receipt = {"v": 2, "request_id": "r", "model": "m", "endpoint": "/v1/chat/completions",
               "provider_key": "k", "encryption_key": "e", "weight_hash": None, "quantization": None,
               "request_sha256": "0" * 64, "response_sha256": "1" * 64, "prompt_tokens": 1,
               "completion_tokens": 2, "created": 3}
    return {**receipt, **changes}


@pytest.mark.parametrize(("receipt", "signature"), [
    (_receipt(), "é" + "A" * 10),          # a non-latin-1 signature once became a 500 in headers
    (_receipt(), "A\r\nx-evil: 1"),        # header injection
    (_receipt(prompt_tokens=2**63), "AAAA"),
    (_receipt(v=1), "AAAA"),
    (_receipt(response_sha256="not hex"), "AAAA"),
    (_receipt(extra="unsigned"), "AAAA"),
    (_receipt(prompt_tokens="1"), "AAAA"),
])
def test_a_malformed_receipt_is_a_malformed_frame(receipt: dict[str, Any], signature: str) -> None:
    frame = {"type": "inference_complete", "request_id": "r",
             "usage": {"prompt_tokens": 1, "completion_tokens": 2},
             "receipt": {"receipt": receipt, "signature": signature}}
    malformed_from_provider(frame)


def test_a_well_formed_receipt_decodes_typed() -> None:
    frame = from_provider({"type": "inference_complete", "request_id": "r",
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                           "receipt": {"receipt": _receipt(), "signature": "AAAA"}})
    assert frame.receipt.receipt.completion_tokens == 2 and frame.receipt.signature == "AAAA"


# --- frame batches (issue 14) --------------------------------------------------------------


def test_a_frame_batch_decodes_each_request_frame_in_order() -> None:
    frames = [InferenceAccepted(request_id="r"),
              InferenceResponseChunk(request_id="r", seq=0, encrypted_data=Sealed(**SEALED)),
              InferenceResponseChunk(request_id="q", seq=4, encrypted_data=Sealed(**SEALED)),
              InferenceError(request_id="s", error="cancelled", status_code=499)]
    text = '{"v":2,"type":"frame_batch","frames":[' + ",".join(map(encode, frames)) + "]}"
    batch = from_provider(text)
    assert isinstance(batch, FrameBatch) and batch.frames == frames
    assert batch == FrameBatch(frames=frames) and from_provider(encode(batch)) == batch


@pytest.mark.parametrize("inner", [
    {"type": "heartbeat"},  # only request frames travel in a batch
    {"type": "frame_batch", "frames": [{"type": "inference_accepted", "request_id": "r"}]},
    {"type": "inference_response_chunk", "request_id": "r", "seq": "x"},
    {"type": "not_a_frame"},
])
def test_a_batch_holding_anything_but_valid_request_frames_is_malformed(inner: dict[str, Any]) -> None:
    bad = malformed_from_provider({"type": "frame_batch", "frames": [
        {"type": "inference_accepted", "request_id": CANARY}, inner]})
    assert bad.close_code == CLOSE_POLICY and "frame_batch" in bad.reason


def test_a_batch_is_bounded() -> None:
    one = {"type": "inference_accepted", "request_id": "r"}
    assert len(from_provider({"type": "frame_batch", "frames": [one] * MAX_BATCH_FRAMES}).frames) \
        == MAX_BATCH_FRAMES
    malformed_from_provider({"type": "frame_batch", "frames": [one] * (MAX_BATCH_FRAMES + 1)})
    malformed_from_provider({"type": "frame_batch", "frames": []})


def test_registered_says_whether_batches_are_read() -> None:
    assert not from_coordinator({"type": "registered", "provider_id": "p"}).frame_batches
    assert from_coordinator({"type": "registered", "provider_id": "p",
                             "frame_batches": True}).frame_batches
