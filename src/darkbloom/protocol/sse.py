"""Server-sent-event framing and the receipt's transcript rule (trust.md §5), in one place.

The provider makes every event; the coordinator relays them; ``darkbloom verify`` and the blind
helper re-derive the transcript hash from what arrived. All of them use these functions.

Transcript: for each event in order, the text after ``data: `` followed by ``\\n``, leaving out
``data: [DONE]`` and comment lines; for a non-streamed body, the body bytes exactly.
"""

from __future__ import annotations

import hashlib

from darkbloom.protocol.trust import SignedReceipt

DATA = "data: "
DONE = "data: [DONE]"
RECEIPT_COMMENT = ": darkbloom-receipt "


def data_of(event: str) -> str | None:
    """The payload of the event's ``data:`` line (an event may start with ``event: x``)."""
    for line in event.split("\n"):
        if line.startswith(DATA):
            return line[len(DATA):]
    return None


def in_transcript(event: str) -> bool:
    return event != DONE and not event.startswith(":")


def transcript_part(event: str, stream: bool) -> bytes:
    """What one event contributes to the receipt's ``response_sha256``."""
    payload = data_of(event) or ""
    return (payload + "\n").encode() if stream else payload.encode()


class Transcript:
    """The running ``response_sha256`` of a response, event by event."""

    def __init__(self, stream: bool) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()

    def add(self, event: str) -> None:
        if in_transcript(event):
            self._hash.update(transcript_part(event, self._stream))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def receipt_comment(signed: SignedReceipt) -> str:
    return RECEIPT_COMMENT + signed.json_text()


def read_receipt_comment(line: str) -> SignedReceipt | None:
    if not line.startswith(RECEIPT_COMMENT):
        return None
    return SignedReceipt.parse(line[len(RECEIPT_COMMENT):])


def split_stream(text: str) -> tuple[bytes, SignedReceipt | None]:
    """A saved stream's transcript bytes and the receipt from its comment line."""
    transcript: list[bytes] = []
    receipt: SignedReceipt | None = None
    for line in text.splitlines():
        if line.startswith(RECEIPT_COMMENT):
            receipt = read_receipt_comment(line)
        elif line.startswith(DATA) and line != DONE:
            transcript.append((line[len(DATA):] + "\n").encode())
    return b"".join(transcript), receipt
