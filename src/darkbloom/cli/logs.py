"""Logging for the long-running commands: timestamps, levels, logger names, the request's
X-Request-ID; never payloads."""

from __future__ import annotations

import logging

from darkbloom.logcontext import FORMAT, JsonFormatter, RequestIdFilter, WithholdExceptionMessages


def setup(level: str, log_format: str = "text") -> None:
    """``log_format="json"``: one JSON object per line (logcontext.JsonFormatter), uvicorn's
    access and error lines included (they propagate to these root handlers: log_config=None)."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
    # On the handlers, not a logger: a logger's filters skip records propagated from its children.
    for handler in logging.getLogger().handlers:
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        for kind in (RequestIdFilter, WithholdExceptionMessages):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())
    # websockets (also under uvicorn's "uvicorn.error" logger) logs whole frames at DEBUG, which
    # could include request content, and aiosqlite every statement with its parameters (key
    # hashes, request rows) from a thread outside any request: keep them at INFO even when our
    # own level is DEBUG.
    for name in ("websockets", "uvicorn.error", "aiosqlite"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


def uvicorn_level(level: str) -> str:
    """uvicorn's own level, capped at info: its websocket layer logs whole frames at debug."""
    return "info" if level.lower() in ("debug", "trace") else level
