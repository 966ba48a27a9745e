"""StopMatcher: stop sequences found across streamed pieces, never emitting a stop's start."""

from __future__ import annotations

import pytest

from darkbloom.provider.engines.stops import StopMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    """Feed pieces until stopped; return everything emitted (plus flush if never stopped)."""
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher(())
    assert matcher.feed("abc") == ("abc", False)
    assert matcher.feed("") == ("", False)
    assert matcher.flush() == ""


def test_stop_inside_one_feed_cuts_stop_and_rest() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("hello STOP and more") == ("hello ", True)
    assert matcher.flush() == ""


def test_stop_at_start() -> None:
    assert StopMatcher(("\n",)).feed("\nrest") == ("", True)


def test_stop_split_across_two_feeds() -> None:
    matcher = StopMatcher(("</s>",))
    assert matcher.feed("abc</") == ("abc", False)
    assert matcher.feed("s> tail") == ("", True)


def test_stop_split_across_many_feeds() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("xS") == ("x", False)
    assert matcher.feed("T") == ("", False)
    assert matcher.feed("O") == ("", False)
    assert matcher.feed("Py") == ("", True)


def test_partial_prefix_held_then_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abST") == ("ab", False)
    assert matcher.feed("AR") == ("STAR", False)
    assert matcher.flush() == ""


def test_partial_prefix_released_keeps_new_prefix() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("ST") == ("", False)
    assert matcher.feed("S") == ("ST", False)  # "STS": "ST" can no longer start STOP, "S" still can
    assert matcher.feed("TOP") == ("", True)


def test_flush_returns_held_text_once() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abSTO") == ("ab", False)
    assert matcher.flush() == "STO"
    assert matcher.flush() == ""


def test_multiple_stops_earliest_wins() -> None:
    assert StopMatcher(("world", "lo")).feed("hello world") == ("hel", True)
    assert StopMatcher(("lo", "world")).feed("hello world") == ("hel", True)
    assert StopMatcher(("b", "abc")).feed("xabc") == ("x", True)


def test_multiple_stops_hold_longest_partial() -> None:
    matcher = StopMatcher(("abcd", "cx"))
    assert matcher.feed("zabc") == ("z", False)  # "abc" may start abcd, "c" may start cx
    assert matcher.feed("x") == ("ab", True)  # "cx" completes; the "ab" held before it is emitted


def test_overlapping_self_prefix() -> None:
    matcher = StopMatcher(("aab",))
    assert matcher.feed("aa") == ("", False)
    assert matcher.feed("ab") == ("a", True)


def test_unicode_stop() -> None:
    matcher = StopMatcher(("。終",))
    assert matcher.feed("こんにちは。") == ("こんにちは", False)
    assert matcher.feed("終わり") == ("", True)


@pytest.mark.parametrize("split", range(len("The answer is 42.\nQ:")))
def test_every_split_point_gives_same_result(split: int) -> None:
    text = "The answer is 42.\nQ: next"
    assert run(("\nQ:",), [text[:split], text[split:]]) == ("The answer is 42.", True)


def test_every_character_fed_alone() -> None:
    text = "one two <|end|> three"
    assert run(("<|end|>", "three"), list(text)) == ("one two ", True)


def test_no_stop_reached_loses_no_text() -> None:
    text = "abSTOabSTxST"
    for split in range(len(text)):
        assert run(("STOP",), [text[:split], text[split:]]) == (text, False)
