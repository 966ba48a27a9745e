"""What a challenge answer signs (trust.md §4): ``nonce + timestamp``, and the canonical status
JSON of the nonce, the timestamp and each posture field that is present."""

from __future__ import annotations

from typing import Any

from darkbloom.crypto.signing import canonical_json


def challenge_bytes(nonce: str, timestamp: str) -> bytes:
    return (nonce + timestamp).encode("ascii")


def status_bytes(nonce: str, timestamp: str, posture: dict[str, Any]) -> bytes:
    present = {k: v for k, v in posture.items() if v is not None and v != ""}
    return canonical_json({"nonce": nonce, "timestamp": timestamp, **present})
