"""Logging for the long-running commands: timestamps, levels, logger names; never payloads."""

from __future__ import annotations

import logging


def setup(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets (also under uvicorn's "uvicorn.error" logger) logs whole frames at DEBUG, which
    # could include request content: keep both at INFO even when our own level is DEBUG.
    for name in ("websockets", "uvicorn.error"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


def uvicorn_level(level: str) -> str:
    """uvicorn's own level, capped at info: its websocket layer logs whole frames at debug."""
    return "info" if level.lower() in ("debug", "trace") else level
