"""Incremental stop-sequence matching over streamed text."""

from __future__ import annotations


class StopMatcher:
    """Holds back just enough text to never emit the start of a stop sequence.

    ``feed`` returns (text safe to emit, stopped). Once stopped, the stop sequence itself and
    anything after it are discarded, as OpenAI does.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [(i, s) for s in self._stops if (i := buffer.find(s)) >= 0]
        if hits:
            self._held = ""
            index, self.matched = min(hits)
            return buffer[:index], True
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Text still held back when generation ends for another reason."""
        held, self._held = self._held, ""
        return held
