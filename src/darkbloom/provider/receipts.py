"""Signed response receipts (trust.md §5, our design; receipt ``v`` 2).

The provider hashes exactly the bytes the consumer will receive (the coordinator relays them
unchanged) and signs a receipt binding them to the request bytes it decrypted, the weights that
served it and its identity key. Streams carry the receipt as an SSE comment, which every SSE
parser skips; non-streamed bodies get it in headers via ``inference_complete``.
"""

from __future__ import annotations

import hashlib
import time

from darkbloom.crypto.signing import IdentityKey
from darkbloom.protocol.sse import Transcript
from darkbloom.protocol.trust import Receipt, SignedReceipt


class ReceiptWriter:
    def __init__(self, identity: IdentityKey, *, request_id: str, model: str, endpoint: str,
                 encryption_key: str, weight_hash: str | None, quantization: str | None,
                 request_body: bytes, stream: bool) -> None:
        self._identity = identity
        self._template = Receipt(
            request_id=request_id, model=model, endpoint=endpoint, provider_key=identity.public_b64,
            encryption_key=encryption_key, weight_hash=weight_hash, quantization=quantization,
            request_sha256=hashlib.sha256(request_body).hexdigest(), response_sha256="0" * 64,
            prompt_tokens=0, completion_tokens=0, created=0)
        self._transcript = Transcript(stream)

    def add(self, event: str) -> None:
        self._transcript.add(event)

    def add_body(self, piece: bytes) -> None:
        """A piece of a media answer's body (media.md): hashed as the bytes it is."""
        self._transcript.add_body(piece)

    def sign(self, prompt_tokens: int, completion_tokens: int, *, audio_ms: int | None = None,
             images: int | None = None) -> SignedReceipt:
        receipt = self._template.model_copy(update={
            "response_sha256": self._transcript.hexdigest(), "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "created": int(time.time()),
            "audio_ms": audio_ms, "images": images})
        return SignedReceipt(receipt=receipt, signature=self._identity.sign(receipt.message()))
