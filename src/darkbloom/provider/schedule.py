"""Schedule windows: when a provider serves, in local wall time (provider.md "Config").

Pure: no clock of its own. The caller passes `now` (a naive local datetime from whatever clock it
holds, so tests drive time instead of sleeping) and gets back whether the provider should be online
and when that next flips, so the agent sleeps until then instead of polling.

A window belongs to the day it starts on: `days = ["fri"], start = "22:00", end = "08:00"` is open
from Friday 22:00 to Saturday 08:00. `end < start` runs into the next morning, `end == start` is a
whole 24 h, and a Sunday overnight window runs into Monday (the week wraps).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def minutes_of(clock: str) -> int:
    """"22:30" -> 1350. Strictly HH:MM on a 24-hour clock; midnight is "00:00" (never "24:00")."""
    match = _CLOCK.fullmatch(clock)
    if match is None:
        raise ValueError(f"{clock[:16]!r} is not a time: use HH:MM on a 24-hour clock, e.g. 08:00 "
                         "or 22:30 (midnight is 00:00)")
    return int(match[1]) * 60 + int(match[2])


class Window(BaseModel):
    """One `[[schedule.windows]]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: list[Day] = Field(min_length=1, max_length=7)
    start: str
    end: str

    @field_validator("days", mode="before")
    @classmethod
    def _lower_days(cls, value: object) -> object:
        if isinstance(value, list):
            return [day.strip().lower() if isinstance(day, str) else day for day in value]
        return value

    @field_validator("days")
    @classmethod
    def _distinct_days(cls, value: list[Day]) -> list[Day]:
        if len(set(value)) != len(value):
            raise ValueError("a day is listed twice")
        return value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _toml_time(cls, value: object) -> object:
        """TOML's own time (`start = 22:00:00`, unquoted) is taken when it is a whole minute."""
        if isinstance(value, time) and value.tzinfo is None and not value.second and not value.microsecond:
            return value.strftime("%H:%M")
        return value

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        minutes_of(value)
        return value

    def intervals(self) -> list[tuple[int, int]]:
        """[open, close) in minutes from Monday 00:00, one per day; close may pass the week's end."""
        start, end = minutes_of(self.start), minutes_of(self.end)
        length = end - start if end > start else end - start + MINUTES_PER_DAY  # == : 24 h
        return [(DAYS.index(day) * MINUTES_PER_DAY + start,
                 DAYS.index(day) * MINUTES_PER_DAY + start + length) for day in self.days]


class Schedule(BaseModel):
    """`[schedule]`: disabled (the default) means always open."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    windows: list[Window] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _windows_when_enabled(self) -> Schedule:
        # Enabled with no window would keep the provider offline for good, silently.
        if self.enabled and not self.windows:
            raise ValueError("enabled, but there are no windows: add [[schedule.windows]] or set "
                             "enabled = false")
        return self

    def _open_spans(self) -> list[tuple[int, int]]:
        """The open time as disjoint, sorted [open, close) spans within [0, one week)."""
        spans: list[tuple[int, int]] = []
        for window in self.windows:
            for a, b in window.intervals():
                if b > MINUTES_PER_WEEK:  # Sunday night into Monday morning
                    spans += [(a, MINUTES_PER_WEEK), (0, b - MINUTES_PER_WEEK)]
                else:
                    spans.append((a, b))
        merged: list[tuple[int, int]] = []
        for a, b in sorted(spans):
            if merged and a <= merged[-1][1]:  # overlapping or adjacent: one span
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def _changes(self) -> list[int]:
        """Minutes of the week at which open/closed flips, sorted; empty when it never does."""
        spans = self._open_spans()
        if not spans or spans == [(0, MINUTES_PER_WEEK)]:
            return []
        wraps = spans[0][0] == 0 and spans[-1][1] == MINUTES_PER_WEEK  # open across Sunday 24:00
        points = {a for a, _ in spans} | {b % MINUTES_PER_WEEK for _, b in spans}
        if wraps:
            points.discard(0)
        return sorted(points)

    def is_open(self, now: datetime) -> bool:
        """Whether the provider should be online at local wall time `now`."""
        if not self.enabled:
            return True
        offset = _since_week_start(now)
        return any(timedelta(minutes=a) <= offset < timedelta(minutes=b) for a, b in self._open_spans())

    def next_change(self, now: datetime) -> datetime | None:
        """The first instant strictly after `now` at which `is_open` gives the other answer; None
        when it never will (disabled, no gap in the week, or nothing open)."""
        changes = self._changes() if self.enabled else []
        if not changes:
            return None
        week_start = now - _since_week_start(now)
        for minute in changes + [c + MINUTES_PER_WEEK for c in changes]:
            at = week_start + timedelta(minutes=minute)
            if at > now:
                return at
        raise AssertionError("unreachable: a change falls within every week")


def _since_week_start(now: datetime) -> timedelta:
    """Wall time elapsed since Monday 00:00 of `now`'s week."""
    monday = datetime.combine(now.date() - timedelta(days=now.weekday()), time(), tzinfo=now.tzinfo)
    return now - monday
