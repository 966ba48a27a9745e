"""The bench's client: one streamed OpenAI chat completion read as a user's client reads it, and
the statistics of many.

Every system is measured through this same code, so the client's own cost (HTTP, SSE parsing on
this machine's shared cores) weighs on all of them alike. A token is one SSE ``data:`` event
whose first choice carries non-empty ``delta.content``: role-only, empty and usage events are not
tokens, so TTFT is the time until the user could show the first character.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import httpx

MAX_ERROR_BYTES = 512  # what is kept of a refused request's body, for the report


@dataclass(frozen=True, slots=True)
class Stream:
    """One request as the client saw it; times from ``time.perf_counter()``."""

    sent: float  # just before the request was written
    first: float  # first content event (0 if none)
    last: float  # last content event (0 if none)
    tokens: int  # content events
    error: str = ""  # "HTTP 503: ..." when the request was refused or broke

    @property
    def ttft_s(self) -> float:
        return self.first - self.sent

    @property
    def decode_tps(self) -> float | None:
        """Per-stream decode speed: tokens after the first over the time they took."""
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


def _content(event: bytes) -> bool:
    """True when an SSE data payload carries text in its first choice's delta."""
    if not event.startswith(b"{"):
        return False  # "[DONE]" or anything else that is not a chunk
    try:
        choices = json.loads(event).get("choices") or [{}]
        return bool((choices[0].get("delta") or {}).get("content"))
    except (ValueError, AttributeError, IndexError):
        return False


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, object],
                      headers: dict[str, str] | None = None) -> Stream:
    """POST one streamed chat completion and time its content events. Never raises for the
    server's sake: a refusal or a broken stream is a Stream with ``error`` set."""
    sent = time.perf_counter()
    first = last = 0.0
    tokens = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread())[:MAX_ERROR_BYTES].decode("utf-8", "replace")
                return Stream(sent, 0.0, 0.0, 0, f"HTTP {response.status_code}: {text}")
            async for line in response.aiter_lines():
                if line.startswith("data:") and _content(line[5:].strip().encode()):
                    last = time.perf_counter()
                    if tokens == 0:
                        first = last
                    tokens += 1
    except httpx.HTTPError as exc:
        return Stream(sent, first, last, tokens, f"{type(exc).__name__}: {exc}")
    return Stream(sent, first, last, tokens, "" if tokens else "no content events")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True, slots=True)
class Summary:
    """One system at one concurrency, over all its rounds."""

    requests: int
    failed: int
    short: int  # served, but with fewer content events than max_tokens asked for
    ttft_p50_ms: float
    ttft_p99_ms: float
    decode_tps_p50: float
    aggregate_tps: float  # content tokens of all rounds / wall time of those rounds
    tokens: int


def summarize(streams: list[Stream], wall_s: float, max_tokens: int) -> Summary:
    """``wall_s``: the summed wall time of the rounds these streams were sent in."""
    served = [s for s in streams if not s.error]
    ttft = [s.ttft_s * 1000 for s in served] or [float("nan")]
    tps = [t for s in served if (t := s.decode_tps) is not None] or [float("nan")]
    tokens = sum(s.tokens for s in streams)
    return Summary(requests=len(streams), failed=len(streams) - len(served),
                   short=sum(1 for s in served if s.tokens < max_tokens),
                   ttft_p50_ms=pct(ttft, 50), ttft_p99_ms=pct(ttft, 99),
                   decode_tps_p50=statistics.median(tps),
                   aggregate_tps=tokens / wall_s if wall_s > 0 else float("nan"), tokens=tokens)
