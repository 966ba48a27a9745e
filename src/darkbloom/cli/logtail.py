"""`darkbloom logs`: the last lines of the daemon log, read backwards from the end in blocks (a
huge log costs no more memory than the lines shown), and following it across rotation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK = 64 * 1024
MAX_LINES = 10_000
# A line longer than this is cut (a runaway line must not make `logs` read the whole file).
MAX_LINE_BYTES = 64 * 1024


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines (at most MAX_LINES), each at most MAX_LINE_BYTES; raises OSError."""
    n = max(0, min(n, MAX_LINES))
    if n == 0:
        return []
    budget = n * (MAX_LINE_BYTES + 1)
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= n and end - pos < budget:
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the file ends the last line, it does not start another
    shown = [_text(line) for line in lines]
    if pos > 0 and shown:
        # Read from mid-line: the first piece is the end of a line. Shown only when the byte
        # budget stopped the reading before n lines (a huge line), marked as cut.
        first = lines[0][-MAX_LINE_BYTES:].decode("utf-8", "replace")
        shown[0] = "[…] " + first
        if len(shown) > n:
            shown.pop(0)
    return shown[-n:]


def _text(line: bytes) -> str:
    cut = line[:MAX_LINE_BYTES]
    text = cut.decode("utf-8", "replace").rstrip("\r")
    return text + " […]" if len(line) > MAX_LINE_BYTES else text


def follow(path: Path, sleep: Callable[[float], None] = time.sleep,
           poll_s: float = 0.5) -> Iterator[str]:
    """New lines as they are written, from the current end, forever (the caller stops on Ctrl-C).
    Rotation (the file replaced by a new one) or truncation: the rest of the old file is read,
    then the new one from its start. A missing file is waited for."""
    f: BinaryIO | None = None
    inode: int | None = None
    pending = b""
    try:
        f, inode = _open_at_end(path)
        while True:
            chunk = f.read(BLOCK) if f else b""
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield _text(line)
                if len(pending) > MAX_LINE_BYTES:  # a line without end: show it cut, go on
                    yield _text(pending)
                    pending = b""
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                sleep(poll_s)
                continue
            if f is None or stat.st_ino != inode or stat.st_size < f.tell():
                if f is not None:
                    f.close()
                if pending:  # the old file's last line, never ended
                    yield _text(pending)
                    pending = b""
                f, inode = path.open("rb"), stat.st_ino  # rotated or truncated: from the start
                continue
            sleep(poll_s)
    finally:
        if f is not None:
            f.close()


def _open_at_end(path: Path) -> tuple[BinaryIO | None, int | None]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None, None
    f.seek(0, os.SEEK_END)
    return f, os.fstat(f.fileno()).st_ino
