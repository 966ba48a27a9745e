"""Split a model's ``<think>…</think>`` reasoning from its answer, incrementally.

Tags may arrive split across chunks (``<thi`` + ``nk>``), so text that could be the start of a
tag is held back until it is decided. An unclosed ``<think>`` makes everything after it
reasoning; the blank line models put after ``</think>`` is not part of the answer.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["reasoning", "content"]
OPEN, CLOSE = "<think>", "</think>"


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    def __init__(self) -> None:
        self._thinking = False
        self._held = ""
        self._after_close = False

    @property
    def kind(self) -> Kind:
        return "reasoning" if self._thinking else "content"

    def feed(self, text: str) -> list[tuple[Kind, str]]:
        out: list[tuple[Kind, str]] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            tag = CLOSE if self._thinking else OPEN
            index = buffer.find(tag)
            if index < 0:
                keep = _partial_tag(buffer, tag)
                self._emit(out, buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                break
            self._emit(out, buffer[:index])
            buffer = buffer[index + len(tag):]
            self._after_close = self._thinking
            self._thinking = not self._thinking
        return out

    def flush(self) -> list[tuple[Kind, str]]:
        out: list[tuple[Kind, str]] = []
        held, self._held = self._held, ""
        self._emit(out, held)
        return out

    def _emit(self, out: list[tuple[Kind, str]], text: str) -> None:
        if self._after_close and not self._thinking:
            text = text.lstrip("\n")
            if not text:
                return
            self._after_close = False
        if not text:
            return
        if out and out[-1][0] == self.kind:
            out[-1] = (self.kind, out[-1][1] + text)
        else:
            out.append((self.kind, text))
