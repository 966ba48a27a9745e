"""Consumer-blind mode, consumer side (trust.md §9): seal the request to attested providers
yourself, so the coordinator relays ciphertext it cannot open.

    listing = httpx.get(f"{base}/v1/providers/attestation").json()["providers"]
    roots = load_roots([Path("my-root-ca.pem")])         # roots YOU pin, never the coordinator's
    body, sessions = seal_to_providers({"model": ..., "messages": [...]}, listing, root_cas=roots)
    response = httpx.post(f"{base}/v1/chat/completions", content=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": MEDIA_TYPE})
    events = open_response(sessions, response.headers["x-provider-id"], response.text, stream=False)

The coordinator is not trusted here: every provider is checked locally (its blob, and its
certificate chain against roots the caller pins), the listing's ``trust_level`` is never read,
and every answer is checked chunk by chunk (direction, request id and sequence are sealed in)
and must end with a receipt signed by the provider it was sealed to, covering exactly the
bytes received and the body sent. Without pinned roots a coordinator could list providers it
runs itself, so that needs the loudly named ``insecure_accept_self_signed=True`` (local testing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from darkbloom.client.verify import check_provider
from darkbloom.crypto import KeyPair, SealingError, SessionChannel, public_key_from_b64
from darkbloom.protocol.blind import CONSUMER_SEALED, MAX_PROVIDERS, MEDIA_TYPE, SealedError
from darkbloom.protocol.sse import DONE, Transcript, event_problem, read_receipt_comment
from darkbloom.protocol.trust import InvalidAttestation

__all__ = ["MEDIA_TYPE", "BlindSession", "open_error", "open_response", "seal_to_providers"]


class BlindResponseError(ValueError):
    """The answer cannot be trusted: a chunk did not open, or the receipt does not hold."""


@dataclass(frozen=True, slots=True)
class BlindSession:
    """What opens and checks one provider's answer."""

    channel: SessionChannel
    identity_key: str
    encryption_key: str
    request_sha256: str
    stream: bool
    entry: dict[str, Any] = field(repr=False)


def _listed(entry: object, model: str) -> bool:
    """A listing entry of the shape the envelope needs, for ``model`` (the listing is the
    coordinator's: any field may be missing or of another type)."""
    if not isinstance(entry, dict):
        return False
    provider_id, models = entry.get("provider_id"), entry.get("models")
    return isinstance(provider_id, str) and 1 <= len(provider_id) <= 64 \
        and isinstance(models, list) and model in models


def eligible(listing: list[dict[str, Any]], model: str, root_cas: list[Any] | None) -> list[dict[str, Any]]:
    """Listed providers of ``model`` whose blob (and, with roots, chain) checks out locally; the
    first entry of an id stands (a request seals to a provider id once). An entry the listing
    itself calls unroutable is skipped: the listing may narrow the choice, never widen it."""
    found: dict[str, dict[str, Any]] = {}
    for entry in listing:
        if not _listed(entry, model) or entry["provider_id"] in found or entry.get("routable") is False:
            continue
        try:
            _, problem = check_provider(entry, root_cas)
            public_key_from_b64(entry["encryption_public_key"])  # the key the blob binds, usable
        except (InvalidAttestation, SealingError, TypeError):
            continue
        if problem is None:
            found[entry["provider_id"]] = entry
    return list(found.values())


def seal_to_providers(body: dict[str, Any], listing: list[dict[str, Any]], *,
                      root_cas: list[Any] | None = None, insecure_accept_self_signed: bool = False,
                      providers: int = MAX_PROVIDERS) -> tuple[bytes, dict[str, BlindSession]]:
    """The envelope to POST, and per provider the session that opens and checks its answer."""
    if root_cas is None and not insecure_accept_self_signed:
        raise ValueError("pin the root CAs you trust (root_cas=...): without them a coordinator can "
                         "list providers it runs itself. For local testing only, pass "
                         "insecure_accept_self_signed=True.")
    model = body["model"]
    chosen = eligible(listing, model, root_cas)[:max(1, min(providers, MAX_PROVIDERS))]
    if not chosen:
        raise LookupError(f"no provider serving {model!r} passes the local checks")
    plaintext = json.dumps(body).encode()
    stream = bool(body.get("stream", False))
    sealed, sessions = [], {}
    for entry in chosen:
        ephemeral = KeyPair.generate()
        channel = SessionChannel(ephemeral, public_key_from_b64(str(entry["encryption_public_key"])),
                                 "requester")
        sessions[str(entry["provider_id"])] = BlindSession(
            channel, str(entry["identity_public_key"]), str(entry["encryption_public_key"]),
            hashlib.sha256(plaintext).hexdigest(), stream, entry)
        sealed.append({"provider_id": entry["provider_id"],
                       "encryption_public_key": entry["encryption_public_key"],
                       "ephemeral_public_key": ephemeral.public_b64,
                       "ciphertext": channel.seal("request", CONSUMER_SEALED, 0, plaintext)})
    max_tokens = body.get("max_tokens") or body.get("max_output_tokens")
    envelope: dict[str, Any] = {"v": 2, "model": model, "stream": stream, "sealed": sealed}
    if max_tokens is not None:
        envelope["max_tokens"] = max_tokens
    return json.dumps(envelope).encode(), sessions


def _sealed_chunks(text: str, stream: bool) -> tuple[str, list[str]]:
    """The request id and the ciphertexts, in order, checking the sequence numbers."""
    try:
        if stream:
            events = [json.loads(line[len("data: "):]) for line in text.splitlines()
                      if line.startswith("data: {")]
            ids = {e["request_id"] for e in events}
            if [e["seq"] for e in events] != list(range(len(events))) or len(ids) != 1:
                raise BlindResponseError("chunks are missing, reordered or from several requests")
            return str(ids.pop()), [str(e["sealed"]) for e in events]
        body = json.loads(text)
        return str(body["request_id"]), [str(c) for c in body["sealed"]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BlindResponseError("the response is not a consumer-blind response") from exc


def open_response(sessions: dict[str, BlindSession], provider_id: str, text: str, stream: bool) -> list[str]:
    """The provider's own payloads (``data: {...}`` events, then the receipt comment), in order,
    once every chunk opened under its position and the receipt verifies. Raises
    BlindResponseError otherwise: never returns an answer it could not check."""
    session = sessions.get(provider_id)
    if session is None:
        raise BlindResponseError("the coordinator answered from a provider the request was not sealed to")
    request_id, chunks = _sealed_chunks(text, stream)
    try:
        payloads = [session.channel.open("response", request_id, seq, c).decode("utf-8")
                    for seq, c in enumerate(chunks)]
    except (SealingError, UnicodeDecodeError) as exc:
        raise BlindResponseError("a chunk did not open: altered, reordered or not from that provider") \
            from exc
    _check_receipt(session, request_id, payloads)
    return payloads


def _check_receipt(session: BlindSession, request_id: str, payloads: list[str]) -> None:
    """The receipt must come after every data event (only ``[DONE]`` may follow it), be signed by
    the identity key the body was sealed for, and cover exactly these events and that body."""
    at = next((i for i, p in enumerate(payloads) if read_receipt_comment(p) is not None), None)
    if at is None or any(p != DONE for p in payloads[at + 1:]):
        raise BlindResponseError("the answer has no receipt at its end (truncated?)")
    if not session.stream and (at, len(payloads)) != (1, 2):
        raise BlindResponseError("a non-streamed answer must be one body and its receipt")
    if any(event_problem(p) is not None for p in payloads[:at]):
        raise BlindResponseError("the answer holds events its receipt cannot cover")
    signed = read_receipt_comment(payloads[at])
    assert signed is not None
    transcript = Transcript(session.stream)
    for payload in payloads[:at]:
        transcript.add(payload)
    receipt = signed.receipt
    problems = [name for name, ok in (
        ("request id", receipt.request_id == request_id),
        ("provider key", receipt.provider_key == session.identity_key),
        ("encryption key", receipt.encryption_key == session.encryption_key),
        ("response hash", receipt.response_sha256 == transcript.hexdigest()),
        ("request hash", receipt.request_sha256 == session.request_sha256),
        ("signature", signed.valid()),
    ) if not ok]
    if problems:
        raise BlindResponseError(f"the receipt does not hold: {', '.join(problems)}")


def open_error(sessions: dict[str, BlindSession], error_body: dict[str, Any]) -> dict[str, Any]:
    """A provider's sealed refusal (``error.sealed`` of a 4xx) as ``{"message", "param"}``. The
    refusing provider is not named in the clear, so each session the request was sealed for is
    tried; only the right one opens it."""
    detail = error_body.get("error", {}) if isinstance(error_body, dict) else {}
    try:
        sealed = SealedError.model_validate(detail.get("sealed") if isinstance(detail, dict) else None)
    except ValidationError as exc:
        raise BlindResponseError("the error carries no sealed words") from exc
    for session in sessions.values():
        try:
            words = json.loads(session.channel.open("error", sealed.request_id, 0, sealed.ciphertext))
        except (SealingError, ValueError):
            continue
        return dict(words) if isinstance(words, dict) else {"message": str(words), "param": None}
    raise BlindResponseError("the sealed error did not open with any of the request's sessions")
