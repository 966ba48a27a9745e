"""Logging for the long-running commands: timestamps, levels, logger names; never payloads."""

from __future__ import annotations

import logging


def setup(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs frames at DEBUG; keep it quiet even when our own level is DEBUG.
    logging.getLogger("websockets").setLevel(logging.INFO)
