"""Schedule windows (provider/schedule.py): parsing, is_open and next_change, against a brute-force
minute scan written from the definition (a window belongs to the day it starts on)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from darkbloom.provider.schedule import DAYS, Schedule, Window, minutes_of

# 2024-01-01 is a Monday.
MON = datetime(2024, 1, 1)


def at(day: str, clock: str, week: int = 0, second: int = 0) -> datetime:
    hours, minutes = map(int, clock.split(":"))
    return MON + timedelta(weeks=week, days=DAYS.index(day), hours=hours, minutes=minutes, seconds=second)


def schedule(*windows: tuple[list[str], str, str], enabled: bool = True) -> Schedule:
    return Schedule(enabled=enabled,
                    windows=[{"days": days, "start": start, "end": end} for days, start, end in windows])


# --- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("clock", "minutes"), [("00:00", 0), ("08:05", 485), ("23:59", 1439)])
def test_clock_times(clock: str, minutes: int) -> None:
    assert minutes_of(clock) == minutes


@pytest.mark.parametrize("clock", ["24:00", "8:00", "22:60", "2200", " 22:00", "22:00 ", "22:00:00",
                                   "", "noon", "-1:00", "٢٢:٠٠"])
def test_bad_clock_times_are_refused(clock: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        minutes_of(clock)


def test_days_are_case_insensitive_and_toml_times_are_taken() -> None:
    window = Window(days=["Mon", "FRI"], start=time(22, 0), end="08:00")  # type: ignore[list-item,arg-type]
    assert window.days == ["mon", "fri"] and window.start == "22:00"


@pytest.mark.parametrize(("window", "problem"), [
    ({"days": [], "start": "22:00", "end": "08:00"}, "at least 1"),
    ({"days": ["monday"], "start": "22:00", "end": "08:00"}, "'mon', 'tue'"),
    ({"days": ["mon", "mon"], "start": "22:00", "end": "08:00"}, "listed twice"),
    ({"days": "mon", "start": "22:00", "end": "08:00"}, "valid list"),
    ({"days": ["mon"], "start": "25:00", "end": "08:00"}, "HH:MM"),
    ({"days": ["mon"], "start": time(22, 0, 30), "end": "08:00"}, "valid string"),
    ({"days": ["mon"], "start": "22:00"}, "required"),
    ({"days": ["mon"], "start": "22:00", "end": "08:00", "tz": "UTC"}, "Extra inputs"),
])
def test_bad_windows_are_refused(window: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Schedule(enabled=True, windows=[window])  # type: ignore[list-item]


def test_enabled_without_windows_is_refused() -> None:
    """It would keep the provider offline for good without a word."""
    with pytest.raises(ValidationError, match="there are no windows"):
        Schedule(enabled=True)
    assert Schedule(enabled=False).is_open(MON)


# --- is_open / next_change, worked examples ------------------------------------------------------

def test_disabled_is_always_open_whatever_the_windows() -> None:
    closed_most_of_the_week = schedule((["mon"], "10:00", "11:00"), enabled=False)
    assert all(closed_most_of_the_week.is_open(MON + timedelta(hours=h)) for h in range(0, 24 * 7, 5))
    assert closed_most_of_the_week.next_change(MON) is None


def test_daytime_window() -> None:
    s = schedule((["tue"], "09:00", "17:30"))
    assert not s.is_open(at("tue", "08:59", second=59))
    assert s.is_open(at("tue", "09:00"))
    assert s.is_open(at("tue", "17:29", second=59))
    assert not s.is_open(at("tue", "17:30"))
    assert not s.is_open(at("wed", "10:00"))
    assert s.next_change(at("tue", "08:00")) == at("tue", "09:00")
    assert s.next_change(at("tue", "12:00")) == at("tue", "17:30")
    assert s.next_change(at("tue", "18:00")) == at("tue", "09:00", week=1)


def test_overnight_window_belongs_to_the_day_it_starts_on() -> None:
    s = schedule((["fri"], "22:00", "08:00"))
    assert not s.is_open(at("fri", "21:59"))
    assert s.is_open(at("fri", "22:00"))
    assert s.is_open(at("sat", "07:59", second=59))
    assert not s.is_open(at("sat", "08:00"))
    assert not s.is_open(at("fri", "03:00"))  # Thursday night is not in it
    assert s.next_change(at("fri", "12:00")) == at("fri", "22:00")
    assert s.next_change(at("fri", "23:00")) == at("sat", "08:00")


def test_sunday_overnight_runs_into_next_weeks_monday() -> None:
    s = schedule((["sun"], "22:00", "08:00"))
    assert s.is_open(at("sun", "23:30"))
    assert s.is_open(at("mon", "03:00"))  # this Monday: the previous Sunday's window
    assert s.is_open(at("mon", "03:00", week=1))
    assert not s.is_open(at("mon", "08:00"))
    assert not s.is_open(at("sat", "23:00"))
    assert s.next_change(at("sun", "21:00")) == at("sun", "22:00")
    assert s.next_change(at("sun", "23:00")) == at("mon", "08:00", week=1)
    assert s.next_change(at("mon", "03:00")) == at("mon", "08:00")


def test_end_equal_to_start_is_a_whole_day() -> None:
    s = schedule((["wed"], "09:00", "09:00"))
    assert not s.is_open(at("wed", "08:59"))
    assert s.is_open(at("wed", "09:00")) and s.is_open(at("thu", "08:59"))
    assert not s.is_open(at("thu", "09:00"))
    assert s.next_change(at("wed", "10:00")) == at("thu", "09:00")


def test_adjacent_and_overlapping_windows_flip_once() -> None:
    adjacent = schedule((["mon"], "08:00", "12:00"), (["mon"], "12:00", "18:00"))
    assert adjacent.next_change(at("mon", "09:00")) == at("mon", "18:00")
    overlapping = schedule((["mon"], "08:00", "14:00"), (["mon"], "10:00", "18:00"),
                           (["mon"], "11:00", "12:00"))
    assert overlapping.is_open(at("mon", "17:00"))
    assert overlapping.next_change(at("mon", "09:00")) == at("mon", "18:00")
    # A Sunday window up to midnight then Monday's from midnight: no flip at the week's turn.
    across = schedule((["sun"], "20:00", "00:00"), (["mon"], "00:00", "06:00"))
    assert across.next_change(at("sun", "21:00")) == at("mon", "06:00", week=1)
    assert across.next_change(at("mon", "07:00")) == at("sun", "20:00")


def test_a_week_without_gaps_never_changes() -> None:
    every_day = schedule((list(DAYS), "12:00", "12:00"))
    assert every_day.is_open(at("thu", "03:00")) and every_day.next_change(at("thu", "03:00")) is None
    chained = schedule((["mon", "wed", "fri", "sun"], "00:00", "00:00"), (["tue", "thu", "sat"], "00:00",
                                                                          "00:00"))
    assert chained.next_change(MON) is None


def test_next_change_is_strictly_after_now() -> None:
    s = schedule((["mon"], "10:00", "11:00"))
    assert s.next_change(at("mon", "10:00")) == at("mon", "11:00")
    assert s.next_change(at("mon", "11:00")) == at("mon", "10:00", week=1)
    just_before = at("mon", "09:59", second=59) + timedelta(microseconds=999_999)
    assert s.next_change(just_before) == at("mon", "10:00")


# --- property: against the definition, minute by minute ------------------------------------------

def _oracle_open(windows: list[tuple[list[str], int, int]], t: datetime) -> bool:
    """Straight from the definition: open today after a window's start, or this morning before the
    end of one that started yesterday and ran overnight (end <= start)."""
    minute = t.hour * 60 + t.minute
    today, yesterday = DAYS[t.weekday()], DAYS[(t.weekday() - 1) % 7]
    for days, start, end in windows:
        if end > start:
            if today in days and start <= minute < end:
                return True
        elif (today in days and minute >= start) or (yesterday in days and minute < end):
            return True
    return False


def _oracle_next_change(windows: list[tuple[list[str], int, int]], now: datetime) -> datetime | None:
    state = _oracle_open(windows, now)
    candidate = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(7 * 24 * 60 + 1):
        if _oracle_open(windows, candidate) != state:
            return candidate
        candidate += timedelta(minutes=1)
    return None


# Few distinct times, so that windows often touch, overlap and chain across midnight.
_minutes = st.one_of(st.sampled_from([0, 60, 360, 720, 1320, 1439]), st.integers(0, 1439))
_window = st.tuples(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True), _minutes, _minutes)


@settings(max_examples=150, deadline=None)
@given(windows=st.lists(_window, min_size=1, max_size=4),
       now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_is_open_and_next_change_match_a_minute_scan(
        windows: list[tuple[list[str], int, int]], now: datetime) -> None:
    s = schedule(*[(days, f"{a // 60:02}:{a % 60:02}", f"{b // 60:02}:{b % 60:02}")
                   for days, a, b in windows])
    assert s.is_open(now) == _oracle_open(windows, now)
    expected = _oracle_next_change(windows, now)
    assert s.next_change(now) == expected
    if expected is not None:  # and it really is a flip
        assert s.is_open(expected) != s.is_open(now)
        assert s.is_open(expected - timedelta(microseconds=1)) == s.is_open(now)
