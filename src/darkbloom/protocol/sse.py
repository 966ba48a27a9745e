"""Server-sent-event framing and the receipt's transcript rule (trust.md §5), in one place.

The provider makes every event; the coordinator relays them; ``darkbloom verify`` and the blind
helper re-derive the transcript hash from what arrived. All of them use these functions.

Transcript: for each event in order, the text after ``data: `` followed by ``\\n``, leaving out
``data: [DONE]`` and comment lines; for a non-streamed body, the body bytes exactly.

The rule covers data payloads only, so an event must be in one of the forms the provider makes
(``event_problem``): SSE clients also read ``data:x``, several data lines, other fields and CR
line ends, and read the ``event:`` name, none of which the hashes would cover otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re

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


_EVENT_LINE = re.compile(r"event: ([A-Za-z0-9_.]{1,64})")


def event_problem(event: str) -> str | None:
    """Why one event is not in a form the provider makes, or None. The forms: one comment line,
    ``data: X``, or ``event: NAME`` then ``data: X``, where an event has a NAME exactly when X is
    a JSON object with a ``type``, and then NAME is that type: so the name the client acts on is
    covered by the hash, and no name can be dropped or changed unseen."""
    if "\r" in event:
        return "a carriage return (an SSE line end)"
    lines = event.split("\n")
    if len(lines) == 1 and event.startswith(":"):
        return None
    named = _EVENT_LINE.fullmatch(lines[0]) if len(lines) == 2 else None
    if len(lines) > 2 or (len(lines) == 2 and named is None) or not lines[-1].startswith(DATA):
        return "an event with other lines than `event: NAME` and one data line"
    try:
        data = json.loads(lines[-1][len(DATA):])
    except (ValueError, RecursionError):
        data = None
    kind = data.get("type") if isinstance(data, dict) else None
    if (named[1] if named else None) != kind:
        return "an event name its data does not repeat"
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

    def add_body(self, piece: bytes) -> None:
        """A media answer's body comes in pieces, hashed as the bytes they are (media.md)."""
        self._hash.update(piece)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def receipt_comment(signed: SignedReceipt) -> str:
    return RECEIPT_COMMENT + signed.json_text()


def read_receipt_comment(line: str) -> SignedReceipt | None:
    if not line.startswith(RECEIPT_COMMENT):
        return None
    return SignedReceipt.parse(line[len(RECEIPT_COMMENT):])


class MalformedStream(ValueError):
    """A saved stream with a receipt, holding something its transcript cannot cover."""


def split_stream(text: str) -> tuple[bytes, SignedReceipt | None]:
    """A saved stream's transcript bytes and the receipt from its comment line. Events are split
    at blank lines only (SSE's line ends; ``str.splitlines`` also splits at U+2028 and the like,
    which answers carry unescaped). Raises MalformedStream when a text that has a receipt holds
    an event outside the provider's forms: a client would read what the receipt does not cover."""
    transcript: list[bytes] = []
    receipt: SignedReceipt | None = None
    problem: str | None = None
    for event in re.split(r"\n\n+", text.strip("\n")):
        if not event:
            continue
        problem = problem or event_problem(event)
        if event.startswith(RECEIPT_COMMENT):
            receipt = read_receipt_comment(event)
        elif in_transcript(event):
            transcript.append(transcript_part(event, stream=True))
    if receipt is not None and problem is not None:
        raise MalformedStream(f"the stream holds {problem}, which its receipt cannot cover")
    return b"".join(transcript), receipt
