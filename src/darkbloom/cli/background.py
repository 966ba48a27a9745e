"""Entry point of the background provider: ``python -m darkbloom.cli.background --log-file PATH
serve ...`` runs `darkbloom serve` with every byte it writes (log records, console lines, a native
crash on stderr) going to one size-bounded, rotated log file.

`darkbloom stop` recognises the daemon by this module's name in its command line.
"""

from __future__ import annotations

import logging
import os
import sys
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path

from darkbloom.cli.daemon import LOG_BACKUPS, LOG_MAX_BYTES
from darkbloom.logcontext import FORMAT, RequestIdFilter, WithholdExceptionMessages
from darkbloom.provider.config_files import make_private_dir


class _DaemonLogHandler(RotatingFileHandler):
    """Rotates at ``maxBytes`` and points stdout and stderr (file descriptors 1 and 2) at the
    current file each time it opens one, so output that is not a log record rotates with it.
    The size check seeks to the end of the file, so it counts those bytes too."""

    def _open(self) -> TextIOWrapper:
        stream = super()._open()
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        return stream


def install_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> logging.Handler:
    make_private_dir(path.parent)
    handler = _DaemonLogHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    for kind in (RequestIdFilter, WithholdExceptionMessages):  # as logs.setup() would add
        handler.addFilter(kind())
    logging.getLogger().addHandler(handler)
    return handler


def _configured_level() -> str:
    from darkbloom.config import ProviderSettings

    try:
        level = ProviderSettings().log_level.upper()
    except Exception:  # bad settings: `serve` itself says what is wrong, in this log
        return "INFO"
    return level if isinstance(logging.getLevelName(level), int) else "INFO"


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--log-file":
        sys.exit("usage: python -m darkbloom.cli.background --log-file PATH serve [ARGS...]")
    install_log(Path(argv[1]))
    # logs.setup()'s basicConfig() leaves a root logger that has a handler alone, level included.
    logging.getLogger().setLevel(_configured_level())
    from darkbloom.cli.main import app

    app(args=argv[2:], prog_name="darkbloom")


if __name__ == "__main__":
    main(sys.argv[1:])
