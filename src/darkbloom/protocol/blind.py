"""Consumer-blind mode on the wire (trust.md §9): the envelope a consumer posts, and the sealed
events, bodies and errors the coordinator relays back without being able to open them."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MEDIA_TYPE = "application/darkbloom-provider-sealed+json"
ENVELOPE_VERSION = 2
MAX_PROVIDERS = 3
# The request id a consumer seals its body under (direction "request", sequence 0); the
# coordinator seals under "". So a body opens only as what its sealer said it was: relabelled
# ``sealed_by: coordinator``, a consumer's envelope would skip the replay guard and have its
# refusals' words and its receipt sent in the clear.
CONSUMER_SEALED = "consumer-sealed"

Key = Annotated[str, StringConstraints(min_length=44, max_length=44)]  # base64 of 32 bytes
ProviderId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class BlindEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    provider_id: ProviderId
    encryption_public_key: Key
    ephemeral_public_key: Key
    ciphertext: str  # base64(nonce24 ‖ XChaCha20-Poly1305): direction "request", id CONSUMER_SEALED


class BlindEnvelope(BaseModel):
    """What the consumer posts: routing fields in the clear, the body sealed per provider."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Literal[2] = 2
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    sealed: Annotated[list[BlindEntry], Field(min_length=1, max_length=MAX_PROVIDERS)]


def sealed_event(request_id: str, seq: int, ciphertext: str) -> bytes:
    """One relayed response chunk: ``data: {"request_id", "seq", "sealed"}``."""
    return b"data: " + json.dumps({"request_id": request_id, "seq": seq, "sealed": ciphertext},
                                  separators=(",", ":")).encode()


def sealed_body(request_id: str, chunks: list[str]) -> bytes:
    """A non-streamed response: every sealed chunk in order (the body, then the receipt)."""
    return json.dumps({"request_id": request_id, "sealed": chunks}, separators=(",", ":")).encode()


class SealedError(BaseModel):
    """A provider's refusal in consumer-blind mode: status and code travel in the clear, the
    message (which may quote the request) sealed to the consumer as direction "error"."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: Annotated[str, StringConstraints(max_length=128)]
    ciphertext: Annotated[str, StringConstraints(max_length=16384)]
