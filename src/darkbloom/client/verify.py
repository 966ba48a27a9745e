"""Verify a response receipt offline (trust.md §5): which attested machine answered, and that
these are the bytes it produced for this request.

Inputs are what a consumer can save: the response (a streamed SSE text, whose comment line
carries the receipt, or a non-streamed body plus its ``x-darkbloom-receipt`` and
``x-se-signature`` headers) and the ``GET /v1/providers/attestation`` listing. Each check is
reported on its own. Receipts and blobs are parsed by the shared wire models
(``protocol/trust.py``), whose signatures carry domain-separation context strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from darkbloom.crypto.certificates import check_chain
from darkbloom.protocol.sse import split_stream
from darkbloom.protocol.trust import AttestationBlob, InvalidAttestation, SignedReceipt, open_attestation


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    detail: str = ""


def parse_sse(text: str) -> tuple[bytes, dict[str, Any] | None, str | None]:
    """Split a saved stream into its transcript (each data payload but [DONE], plus "\\n") and
    the receipt and signature from its comment line. Raises ValueError (MalformedStream) for a
    stream with a receipt that holds lines a client reads but the receipt cannot cover."""
    transcript, signed = split_stream(text)
    if signed is None:
        return transcript, None, None
    return transcript, signed.receipt.model_dump(), signed.signature


def decode_receipt_header(value: str) -> dict[str, Any]:
    """The ``x-darkbloom-receipt`` header: base64 of the canonical receipt JSON."""
    try:
        receipt = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise ValueError("x-darkbloom-receipt is not base64 JSON") from exc
    if not isinstance(receipt, dict):
        raise ValueError("x-darkbloom-receipt is not a JSON object")
    return receipt


def check_provider(entry: dict[str, Any], root_cas: list[Any] | None
                   ) -> tuple[AttestationBlob, str | None]:
    """A listing entry checked locally: its blob verifies under its own identity key and binds the
    listed keys; with pinned roots, its chain leads to one. Returns the blob and, if the chain
    fails, why. Raises InvalidAttestation when the blob itself does not hold."""
    blob = open_attestation(entry.get("attestation_raw"), entry.get("attestation_signature"))
    if blob.publicKey != entry.get("identity_public_key"):
        raise InvalidAttestation("the blob is for another identity key")
    if blob.encryptionPublicKey != entry.get("encryption_public_key"):
        raise InvalidAttestation("the blob does not bind the listed encryption key")
    if root_cas is None:
        return blob, None
    chain = entry.get("certificate_chain") or None
    if chain is not None and (not isinstance(chain, list) or not all(isinstance(c, str) for c in chain)):
        return blob, "certificate chain is malformed"
    return blob, check_chain(chain, blob.publicKey, blob.serialNumber, root_cas)


def media_step(audio_ms: int | None, images: int | None, response: bytes) -> Step | None:
    """A media receipt's priced units (media.md) against the answer: the images it holds, or
    the duration a JSON transcription states (text, srt and vtt state none)."""
    if audio_ms is None and images is None:
        return None
    try:
        body = json.loads(response)
    except (ValueError, RecursionError):
        body = None
    if images is not None:
        data = body.get("data") if isinstance(body, dict) else None
        held = len(data) if isinstance(data, list) else -1
        return Step(f"response holds the {images} image(s) the receipt charges for", held == images,
                    f"it holds {held}" if held != images else "")
    assert audio_ms is not None
    duration = body.get("duration") if isinstance(body, dict) else None
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        return Step(f"receipt charges for {audio_ms / 1000:.3f} s of audio", True,
                    "this response format states no duration to compare")
    return Step(f"receipt charges for the {audio_ms / 1000:.3f} s of audio the response states",
                abs(duration * 1000 - audio_ms) <= 1, f"response says {duration} s")


def verify_receipt(receipt: dict[str, Any], signature: str, response: bytes,
                   providers: list[dict[str, Any]], request_body: bytes | None = None,
                   root_cas: list[Any] | None = None) -> list[Step]:
    """Run every check; the response is a stream's transcript or a body's exact bytes.

    With ``root_cas`` (certificates you pin yourself, never ones a coordinator serves) the
    provider's certificate chain must lead to one of them: hardware trust checked locally.
    """
    signed = SignedReceipt.parse({"receipt": receipt, "signature": signature})
    steps = [Step("receipt is a well-formed v2 receipt", signed is not None)]
    if signed is None:
        return steps
    key = signed.receipt.provider_key
    entry = next((p for p in providers if isinstance(p, dict) and p.get("identity_public_key") == key),
                 None)
    steps.append(Step("provider is in the attestation listing", entry is not None,
                      "" if entry else f"no provider with identity key {key[:64]}"))
    if entry is not None:
        try:
            blob, problem = check_provider({**entry, "encryption_public_key": signed.receipt.encryption_key},
                                           root_cas)
            attested, detail = True, ""
        except InvalidAttestation as exc:
            blob, problem, attested, detail = None, "no valid blob", False, str(exc)
        steps.append(Step("attestation blob is signed by that identity key and binds the "
                          "receipt's encryption key", attested,
                          "" if attested else
                          f"{detail} (the provider may have restarted: new per-process X25519 key)"))
        if root_cas is not None:
            steps.append(Step("certificate chain leads to a pinned root",
                              blob is not None and problem is None, problem or ""))
    digest = hashlib.sha256(response).hexdigest()
    steps.append(Step("response hash matches the bytes received",
                      digest == signed.receipt.response_sha256, f"sha256 {digest}"))
    if request_body is not None:
        steps.append(Step("request hash matches the body sent",
                          hashlib.sha256(request_body).hexdigest() == signed.receipt.request_sha256))
    if (media := media_step(signed.receipt.audio_ms, signed.receipt.images, response)) is not None:
        steps.append(media)
    steps.append(Step("receipt signature is valid", signed.valid()))
    return steps
