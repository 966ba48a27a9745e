"""What a challenge answer signs (trust.md §4, docs/security.md "Signed messages"), and what a
provider agrees to sign at all.

    challenge: b"darkbloom/challenge/v2\\n" + nonce + "\\n" + timestamp
    status:    b"darkbloom/status/v2\\n" + canonical JSON of nonce, timestamp and each posture
               field that is present

The provider answers only a nonce that is base64 of exactly 32 bytes and a timestamp in RFC 3339
UTC within ``MAX_SKEW`` of its own clock: a coordinator cannot make it sign chosen text.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from darkbloom.crypto.signing import CHALLENGE_CONTEXT, STATUS_CONTEXT, canonical_json

NONCE_BYTES = 32
MAX_SKEW = timedelta(minutes=5)
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NONCE = re.compile(r"^[A-Za-z0-9+/]{43}=$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def new_nonce() -> str:
    return base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii")


def now_stamp() -> str:
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


def challenge_problem(nonce: str, timestamp: str, now: datetime | None = None) -> str | None:
    """Why a challenge must not be answered, or None when it is well-formed and fresh."""
    if not _NONCE.fullmatch(nonce):
        return "nonce is not base64 of 32 bytes"
    try:
        if len(base64.b64decode(nonce, validate=True)) != NONCE_BYTES:
            return "nonce is not base64 of 32 bytes"
    except (binascii.Error, ValueError):
        return "nonce is not base64 of 32 bytes"
    if not _STAMP.fullmatch(timestamp):
        return "timestamp is not RFC 3339 UTC"
    try:
        stamp = datetime.strptime(timestamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return "timestamp is not RFC 3339 UTC"
    if abs((now or datetime.now(UTC)) - stamp) > MAX_SKEW:
        return "timestamp is outside the allowed clock skew"
    return None


def challenge_bytes(nonce: str, timestamp: str) -> bytes:
    return CHALLENGE_CONTEXT + f"{nonce}\n{timestamp}".encode("ascii", "replace")


def status_bytes(nonce: str, timestamp: str, posture: dict[str, Any]) -> bytes:
    present = {k: v for k, v in posture.items() if v is not None and v != ""}
    return STATUS_CONTEXT + canonical_json({"nonce": nonce, "timestamp": timestamp, **present})
