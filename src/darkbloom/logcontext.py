"""The X-Request-ID of the request a log line is about, stamped on every record.

A contextvar rather than an argument: it follows the request's task (and the tasks it starts,
which copy the context) into every module without threading an id through each call.
"""

from __future__ import annotations

import logging
import re
import traceback
from contextvars import ContextVar

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


class WithholdExceptionMessages(logging.Filter):
    """A logged traceback keeps its frames and the exception's type but never its message, which
    may quote the request (a KeyError names a key, a UnicodeError shows the text around it).
    Needed for the server's own "Exception in ASGI application" and any library like it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = "".join(traceback.format_tb(exc.__traceback__))
            record.msg = (f"{record.getMessage().rstrip()}\nTraceback (most recent call last):\n"
                          f"{frames}{type(exc).__name__} (message withheld)")
            record.args, record.exc_info, record.exc_text = None, None, None
        return True
