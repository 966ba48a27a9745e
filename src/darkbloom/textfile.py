"""Reading a small text file that someone else may have put in place (a config file, a token, an
operator's catalog): only a regular file, at most ``limit`` bytes read, UTF-8 text, and never a
hang on a FIFO or /dev/zero put where the file should be."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnreadableFile(Exception):
    """Not a file to read as asked; the message is one line naming the path."""


def read_small(path: Path, limit: int, what: str) -> str | None:
    """The file's text, or None when there is no file. Refuses (UnreadableFile) anything but
    a regular file (a FIFO, /dev/zero), a file over `limit` bytes (reading at most limit + 1), one
    that is not UTF-8 text, or one that cannot be read."""
    try:
        # Non-blocking, so that a FIFO in its place cannot hold the command forever; only a
        # regular file is read at all.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableFile(f"{path}: is a directory, not a {what}" if stat.S_ISDIR(mode)
                                  else f"{path}: not a regular file, so not a {what}")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise UnreadableFile(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise UnreadableFile(f"{path}: too large for a {what} (at most {limit} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path}: not a {what} (not UTF-8 text)") from None
    if "\x00" in text:
        raise UnreadableFile(f"{path}: not a {what} (binary data)")
    return text
