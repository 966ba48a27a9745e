"""The X-Request-ID of the request a log line is about, stamped on every record.

A contextvar rather than an argument: it follows the request's task (and the tasks it starts,
which copy the context) into every module without threading an id through each call.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID: ContextVar[str | None] = ContextVar("darkbloom_request_id", default=None)
# The same alphabet the coordinator accepts from consumers: safe to print in a log line.
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s]: %(message)s"


def sanitize(value: object) -> str | None:
    """The id if it is a short, printable token; None for anything else (it may come off a wire)."""
    return value if isinstance(value, str) and _SANE.fullmatch(value) else None


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


def _withheld(message: str, exc: BaseException) -> str:
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return (f"{message.rstrip()}\nTraceback (most recent call last):\n"
            f"{frames}{type(exc).__name__} (message withheld)")


class WithholdExceptionMessages(logging.Filter):
    """A logged traceback keeps its frames and the exception's type but never its message, which
    may quote the request (a KeyError names a key, a UnicodeError shows the text around it).
    Needed for the server's own "Exception in ASGI application" and any library like it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = _withheld(record.getMessage(), record.exc_info[1])
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``DARKBLOOM_LOG_FORMAT=json``): ``time`` (UTC, RFC 3339 with
    milliseconds), ``level``, ``logger``, ``message``, ``request_id`` (null outside a request).
    Newlines in a message (a traceback) stay inside the JSON string, so a line is a record.

    Only the message the code logged goes out: never the record's ``args`` on their own, and an
    exception still attached (a handler without WithholdExceptionMessages) loses its message too.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = _withheld(message, record.exc_info[1])
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "request_id": None if request_id in (None, "-") else request_id,
        }
        # ASCII-only: a lone surrogate in a message must not make the handler fail to write it.
        return json.dumps(entry, default=str)
