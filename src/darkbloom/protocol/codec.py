"""Encode and decode WebSocket frames, sorting bad input into the outcomes protocol.md names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from darkbloom.protocol import frames
from darkbloom.protocol.frames import CLOSE_VERSION_TOO_OLD, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A well-formed frame of a type this side does not speak: log the type, ignore it."""

    type: str


class MalformedFrame(Exception):
    """A frame that cannot be understood; the connection is closed with ``reason``."""

    def __init__(self, reason: str, *, close_code: int = 1008) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


# Every field name any wire model has: a path part outside this set is a sender-chosen dict key.
_FIELD_NAMES = frozenset(
    name for obj in vars(frames).values()
    if isinstance(obj, type) and issubclass(obj, BaseModel) for name in obj.model_fields
)


def _path(loc: tuple[int | str, ...]) -> str:
    """Name the bad field without echoing payload text (dict keys become ``*``)."""
    parts = [str(p) if isinstance(p, int) or p in _FIELD_NAMES else "*" for p in loc]
    return ".".join(parts) or "?"


# No honest frame holds more than a few hundred JSON values: its bulk is base64 text (chunks,
# bodies, blobs). Parsing holds the GIL for about 0.2 µs per value and validation costs ten times
# that, so a 10 MiB `register` listing a million models held the coordinator's event loop for
# 4 s and 800 MB, before its token was even checked. Values are counted before parsing.
MAX_FRAME_VALUES = 10_000
_COUNT_ABOVE = 64 * 1024  # a smaller frame cannot hold enough values to matter


def _values(text: str | bytes) -> int:
    """An upper bound on the JSON values in ``text``: separators and openers."""
    if isinstance(text, bytes):
        return text.count(b",") + text.count(b"[") + text.count(b"{")
    return text.count(",") + text.count("[") + text.count("{")


def encode(frame: BaseModel) -> str:
    return frame.model_dump_json(exclude_none=True)


def decode(text: str | bytes, adapter: TypeAdapter[T], known_types: frozenset[str]) -> T | UnknownFrame:
    """Parse one frame; raise MalformedFrame with a reason that never contains payload text."""
    if len(text) > _COUNT_ABOVE and _values(text) > MAX_FRAME_VALUES:
        raise MalformedFrame(f"frame has more than {MAX_FRAME_VALUES} JSON values")
    try:
        raw: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedFrame("frame is not valid JSON") from None
    if not isinstance(raw, dict):
        raise MalformedFrame("frame is not a JSON object")
    version = raw.get("v", PROTOCOL_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedFrame("frame field 'v' is not an integer")
    if version > PROTOCOL_VERSION:
        raise MalformedFrame(f"unsupported protocol version {version}", close_code=4400)
    if version < MIN_PROTOCOL_VERSION:
        raise MalformedFrame(f"protocol version {version} is too old; upgrade darkbloom",
                             close_code=CLOSE_VERSION_TOO_OLD)
    frame_type = raw.get("type")
    if not isinstance(frame_type, str):
        raise MalformedFrame("frame has no string 'type'")
    if frame_type not in known_types:
        return UnknownFrame(frame_type[:64])
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        fields = sorted({_path(e["loc"][1:]) for e in exc.errors()})
        raise MalformedFrame(f"invalid {frame_type} frame: bad field(s) {', '.join(fields)}") from None
