"""Signed response receipts (trust.md §5, our design).

The provider hashes exactly the bytes the consumer will receive (the coordinator relays them
unchanged) and signs a receipt binding them to the request bytes it decrypted, the weights that
served it and its identity key. Streams carry the receipt as an SSE comment, which every SSE
parser skips; non-streamed bodies get it in headers via ``inference_complete``.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from darkbloom.crypto.signing import IdentityKey, canonical_json

COMMENT_PREFIX = ": darkbloom-receipt "
DONE = "data: [DONE]"


def transcript_part(payload: str, stream: bool) -> bytes:
    """What one payload contributes: the text after ``data: `` (plus ``\\n`` when streamed)."""
    data = payload[payload.index("data: ") + len("data: "):]
    return (data + "\n").encode() if stream else data.encode()


class ReceiptWriter:
    def __init__(self, identity: IdentityKey, fields: dict[str, Any], request_body: bytes,
                 stream: bool) -> None:
        self._identity = identity
        self._fields = {**fields, "request_sha256": hashlib.sha256(request_body).hexdigest()}
        self._stream = stream
        self._transcript = hashlib.sha256()

    def add(self, payload: str) -> None:
        if payload != DONE and not payload.startswith(":"):
            self._transcript.update(transcript_part(payload, self._stream))

    def sign(self, prompt_tokens: int, completion_tokens: int) -> tuple[dict[str, Any], str]:
        receipt = {**self._fields, "v": 1, "response_sha256": self._transcript.hexdigest(),
                   "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "created": int(time.time())}
        return receipt, self._identity.sign(canonical_json(receipt))


def comment(receipt: dict[str, Any], signature: str) -> str:
    return COMMENT_PREFIX + json.dumps({"receipt": receipt, "signature": signature},
                                       separators=(",", ":"), sort_keys=True)
