"""Verify a response receipt offline (trust.md §5): which attested machine answered, and that
these are the bytes it produced for this request.

Inputs are what a consumer can save: the response (a streamed SSE text, whose last comment line is
the receipt, or a non-streamed body plus its ``x-darkbloom-receipt`` and ``x-se-signature``
headers) and the ``GET /v1/providers/attestation`` listing. Each check is reported on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from darkbloom.crypto.certificates import check_chain
from darkbloom.crypto.signing import canonical_json, verify

RECEIPT_PREFIX = ": darkbloom-receipt "


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    detail: str = ""


def parse_sse(text: str) -> tuple[bytes, dict[str, Any] | None, str | None]:
    """Split a saved stream into its transcript (each data payload but [DONE], plus "\\n") and
    the receipt and signature from its comment line."""
    transcript: list[bytes] = []
    receipt: dict[str, Any] | None = None
    signature: str | None = None
    for line in text.splitlines():
        if line.startswith(RECEIPT_PREFIX):
            signed = json.loads(line[len(RECEIPT_PREFIX):])
            receipt, signature = signed.get("receipt"), signed.get("signature")
        elif line.startswith("data: ") and line != "data: [DONE]":
            transcript.append((line[len("data: "):] + "\n").encode())
    return b"".join(transcript), receipt, signature


def decode_receipt_header(value: str) -> dict[str, Any]:
    """The ``x-darkbloom-receipt`` header: base64 of the canonical receipt JSON."""
    try:
        receipt = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("x-darkbloom-receipt is not base64 JSON") from exc
    if not isinstance(receipt, dict):
        raise ValueError("x-darkbloom-receipt is not a JSON object")
    return receipt


def verify_receipt(receipt: dict[str, Any], signature: str, response: bytes,
                   providers: list[dict[str, Any]], request_body: bytes | None = None,
                   root_cas: list[Any] | None = None) -> list[Step]:
    """Run every check; the response is a stream's transcript or a body's exact bytes.

    With ``root_cas`` (certificates you pin yourself, never ones a coordinator serves) the
    provider's certificate chain must lead to one of them: hardware trust checked locally.
    """
    steps: list[Step] = []
    key = receipt.get("provider_key")
    entry = next((p for p in providers if p.get("identity_public_key") == key), None)
    steps.append(Step("provider is in the attestation listing", entry is not None,
                      "" if entry else f"no provider with identity key {key}"))
    blob: dict[str, Any] = {}
    if entry is not None:
        raw = base64.b64decode(str(entry.get("attestation_raw") or ""))
        try:
            blob = json.loads(raw) if raw else {}
        except ValueError:
            blob = {}
        signed = bool(blob) and verify(str(blob.get("publicKey")), raw,
                                       str(entry.get("attestation_signature") or ""))
        steps.append(Step("attestation blob is signed by that identity key",
                          signed and blob.get("publicKey") == key))
        if root_cas is not None:
            problem = check_chain(entry.get("certificate_chain") or None, str(key),
                                  blob.get("serialNumber"), root_cas)
            steps.append(Step("certificate chain leads to a pinned root", problem is None,
                              problem or ""))
        steps.append(Step("attestation binds the receipt's encryption key",
                          blob.get("encryptionPublicKey") == receipt.get("encryption_key"),
                          "the provider may have restarted since (new per-process X25519 key)"
                          if blob.get("encryptionPublicKey") != receipt.get("encryption_key") else ""))
    digest = hashlib.sha256(response).hexdigest()
    steps.append(Step("response hash matches the bytes received",
                      digest == receipt.get("response_sha256"), f"sha256 {digest}"))
    if request_body is not None:
        steps.append(Step("request hash matches the body sent",
                          hashlib.sha256(request_body).hexdigest() == receipt.get("request_sha256")))
    steps.append(Step("receipt signature is valid",
                      isinstance(key, str) and verify(key, canonical_json(receipt), signature)))
    return steps
