"""Consumer-blind mode, consumer side (trust.md §9): seal the request to attested providers
yourself, so the coordinator relays ciphertext it cannot open.

    listing = httpx.get(f"{base}/v1/providers/attestation").json()["providers"]
    body, channels = seal_to_providers({"model": ..., "messages": [...]}, listing)
    response = httpx.post(f"{base}/v1/chat/completions", content=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": MEDIA_TYPE})
    events = open_response(channels, response.headers["x-provider-id"], response.text, stream=False)
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from darkbloom.crypto import Channel, KeyPair, SealingError, public_key_from_b64
from darkbloom.crypto.certificates import check_chain
from darkbloom.crypto.signing import verify

MEDIA_TYPE = "application/darkbloom-provider-sealed+json"
MAX_PROVIDERS = 3
LEVELS = ("none", "self_signed", "hardware")


def attested(entry: dict[str, Any]) -> bool:
    """Check the provider's blob locally: signed by its identity key, binding its X25519 key."""
    try:
        raw = base64.b64decode(str(entry.get("attestation_raw") or ""), validate=True)
        blob = json.loads(raw)
    except (binascii.Error, ValueError):
        return False
    return (isinstance(blob, dict) and blob.get("publicKey") == entry.get("identity_public_key")
            and blob.get("encryptionPublicKey") == entry.get("encryption_public_key")
            and verify(str(blob["publicKey"]), raw, str(entry.get("attestation_signature") or "")))


def seal_to_providers(body: dict[str, Any], listing: list[dict[str, Any]],
                      min_trust: str = "self_signed", providers: int = MAX_PROVIDERS,
                      root_cas: list[Any] | None = None) -> tuple[bytes, dict[str, Channel]]:
    """The envelope to POST, and the per-provider channel that opens the answer.

    ``root_cas`` are roots you pin yourself: with them only providers whose chain leads to one
    are used (a coordinator could otherwise list self-made ``self_signed`` impostors).
    """
    model = body["model"]
    eligible = [p for p in listing if model in p.get("models", []) and attested(p)
                and LEVELS.index(str(p.get("trust_level", "none"))) >= LEVELS.index(min_trust)
                and (root_cas is None or check_chain(p.get("certificate_chain") or None,
                                                     str(p.get("identity_public_key")), None,
                                                     root_cas) is None)]
    if not eligible:
        raise LookupError(f"no attested provider at {min_trust} or above serves {model!r}")
    plaintext = json.dumps(body).encode()
    sealed, channels = [], {}
    for entry in eligible[:min(providers, MAX_PROVIDERS)]:
        ephemeral = KeyPair.generate()
        channel = Channel(ephemeral, public_key_from_b64(str(entry["encryption_public_key"])))
        channels[str(entry["provider_id"])] = channel
        sealed.append({"provider_id": entry["provider_id"],
                       "encryption_public_key": entry["encryption_public_key"],
                       "ephemeral_public_key": ephemeral.public_b64,
                       "ciphertext": channel.seal(plaintext)["ciphertext"]})
    envelope = {"v": 1, "model": model, "stream": bool(body.get("stream", False)),
                "max_tokens": body.get("max_tokens") or body.get("max_output_tokens"), "sealed": sealed}
    return json.dumps(envelope).encode(), channels


def open_response(channels: dict[str, Channel], provider_id: str, text: str, stream: bool) -> list[str]:
    """The provider's own payloads (``data: {...}`` events, the receipt comment), in order."""
    channel = channels[provider_id]
    if stream:
        sealed = [json.loads(line[len("data: "):])["sealed"] for line in text.splitlines()
                  if line.startswith("data: {")]
    else:
        sealed = list(json.loads(text)["sealed"])
    try:
        return [channel.open(c).decode("utf-8") for c in sealed]
    except SealingError as exc:
        raise ValueError("a chunk did not open: not sealed by the provider this key was for") from exc
