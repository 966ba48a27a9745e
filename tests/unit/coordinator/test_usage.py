"""settle_usage: the coordinator's own counts stand; a provider's report only within bounds."""

from __future__ import annotations

import pytest

from darkbloom.coordinator.usage import EVENTS_PER_TOKEN, STREAM_FRAMING_EVENTS, settle_usage
from darkbloom.protocol.frames import Usage


def settle(prompt: int, completion: int, own: int | None = 12, cap: int = 100,
           events: int = 1) -> tuple[tuple[int, int], list[str]]:
    usage, problems = settle_usage(Usage(prompt_tokens=prompt, completion_tokens=completion),
                                   own_prompt_tokens=own, context_length=2048, max_tokens_cap=cap,
                                   events=events)
    return (usage.prompt_tokens, usage.completion_tokens), problems


def test_a_sound_report_is_kept_as_is() -> None:
    assert settle(12, 40, events=43) == ((12, 40), [])
    assert settle(12, 100) == ((12, 100), [])  # exactly the cap, one body chunk


def test_the_coordinators_prompt_count_stands() -> None:
    (prompt, _), problems = settle(2**40, 5)
    assert prompt == 12 and problems == ["prompt_tokens 1099511627776 != own count 12"]
    assert settle(3, 5)[0] == (12, 5)


def test_without_an_own_count_the_report_is_bounded_by_the_context() -> None:
    assert settle(900, 5, own=None) == ((900, 5), [])
    (prompt, _), problems = settle(2**63, 5, own=None)
    assert prompt == 2048 and problems == [f"prompt_tokens {2**63} > context length 2048"]


@pytest.mark.parametrize("reported", [101, 10**6, 2**63])
def test_completion_is_clamped_to_the_cap(reported: int) -> None:
    (_, completion), problems = settle(12, reported)
    assert completion == 100 and problems == [f"completion_tokens {reported} > cap 100"]


def test_a_stream_cannot_report_fewer_tokens_than_its_events_show() -> None:
    events = STREAM_FRAMING_EVENTS + 10 * EVENTS_PER_TOKEN
    assert settle(12, 10, events=events) == ((12, 10), [])
    (_, completion), problems = settle(12, 0, events=events)
    assert completion == 10 and problems == [f"completion_tokens 0 < 10 for {events} events"]
    # Framing alone implies nothing: short streams never raise the count.
    assert settle(12, 0, events=STREAM_FRAMING_EVENTS + EVENTS_PER_TOKEN - 1) == ((12, 0), [])


def test_the_floor_never_exceeds_the_cap() -> None:
    (_, completion), problems = settle(12, 0, cap=5, events=10_000)
    assert completion == 5 and problems == ["completion_tokens 0 < 5 for 10000 events"]
