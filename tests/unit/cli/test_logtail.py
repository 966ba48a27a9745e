"""`darkbloom logs`: the tail read from the end, and following across rotation and truncation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from darkbloom.cli import logtail


def test_tail_of_a_short_file(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_text("a\nb\nc\n")
    assert logtail.tail_lines(log, 2) == ["b", "c"]
    assert logtail.tail_lines(log, 10) == ["a", "b", "c"]
    assert logtail.tail_lines(log, 0) == []
    log.write_text("a\nb")  # no newline at the end
    assert logtail.tail_lines(log, 1) == ["b"]
    log.write_text("")
    assert logtail.tail_lines(log, 5) == []


def test_tail_of_a_large_file_spans_blocks(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    lines = [f"line {i} " + "y" * (i % 300) for i in range(20_000)]  # ~3.4 MB, many blocks
    log.write_text("\n".join(lines) + "\n")
    assert logtail.tail_lines(log, 500) == lines[-500:]
    assert logtail.tail_lines(log, 1) == lines[-1:]
    assert logtail.tail_lines(log, 10**9) == lines[-logtail.MAX_LINES:]


def test_a_huge_line_is_cut_not_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    with log.open("wb") as f:
        f.write(b"first\n" + b"z" * (8 * 1024 * 1024) + b"\nlast\n")
    got = logtail.tail_lines(log, 2)
    assert got[1] == "last"
    assert got[0] == "[…] " + "z" * logtail.MAX_LINE_BYTES  # its end, marked as cut
    # the line before the huge one is beyond the byte budget of 2 lines: not read at all
    assert "first" not in logtail.tail_lines(log, 2)


def test_invalid_utf8_is_shown_replaced(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_bytes(b"ok\n\xff\xfe bad\n")
    assert logtail.tail_lines(log, 2) == ["ok", "\ufffd\ufffd bad"]


def _follow(log: Path, steps: list[Callable[[], None]]) -> list[str]:
    """Run ``follow`` where each of its sleeps performs the next step; then Ctrl-C."""
    def sleep(_: float) -> None:
        if not steps:
            raise KeyboardInterrupt
        steps.pop(0)()

    got: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for line in logtail.follow(log, sleep=sleep):
            got.append(line)
    return got


def _append(log: Path, text: str) -> Callable[[], None]:
    def step() -> None:
        with log.open("a") as f:
            f.write(text)
    return step


def test_follow_from_the_end_across_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_text("old line\n")

    def rotate() -> None:
        with log.open("a") as f:
            f.write("last of the old file\nunfinished")
        os.replace(log, tmp_path / "p.log.1")
        log.write_text("first of the new file\n")

    def truncate() -> None:
        log.write_text("after truncation\n")

    got = _follow(log, [_append(log, "one\ntw"), _append(log, "o\n"), rotate, truncate])
    assert got == ["one", "two", "last of the old file", "unfinished", "first of the new file",
                   "after truncation"]


def test_follow_waits_for_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    assert _follow(log, [lambda: None, _append(log, "hello\n")]) == ["hello"]
