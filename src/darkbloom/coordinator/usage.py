"""The usage a request is recorded (and later charged) with: a provider's report only within what
the coordinator can check itself (docs/decisions.md, "Usage a provider reports").

    prompt      the coordinator's own count wherever it has one; else the report, at most the
                model's context length
    completion  the report, at most the attempt's max_tokens_cap and at least what the stream
                shows was generated: (events - STREAM_FRAMING_EVENTS) // EVENTS_PER_TOKEN
"""

from __future__ import annotations

from darkbloom.protocol.frames import Usage

# Events a stream carries besides those a generated token causes: start, block and item
# boundaries, the tool call, final usage, [DONE], the receipt comment.
STREAM_FRAMING_EVENTS = 16
# The most events one engine delta (one token) can cause: a reasoning and an answer piece, each
# with a Responses item switch (done/added events) ahead of its delta.
EVENTS_PER_TOKEN = 8


def settle_usage(reported: Usage, *, own_prompt_tokens: int | None, context_length: int,
                 max_tokens_cap: int, events: int) -> tuple[Usage, list[str]]:
    """The usage to record, and what was out of bounds in the report (empty when it was sound).

    ``events`` counts every chunk relayed for the attempt, the first included.
    """
    problems: list[str] = []
    if own_prompt_tokens is not None:
        prompt = own_prompt_tokens
        if reported.prompt_tokens != own_prompt_tokens:
            problems.append(f"prompt_tokens {reported.prompt_tokens} != own count {own_prompt_tokens}")
    else:
        prompt = min(reported.prompt_tokens, context_length)
        if prompt != reported.prompt_tokens:
            problems.append(f"prompt_tokens {reported.prompt_tokens} > context length {context_length}")
    floor = completion_floor(events, max_tokens_cap)
    completion = min(max(reported.completion_tokens, floor), max_tokens_cap)
    if reported.completion_tokens > max_tokens_cap:
        problems.append(f"completion_tokens {reported.completion_tokens} > cap {max_tokens_cap}")
    elif reported.completion_tokens < floor:
        problems.append(f"completion_tokens {reported.completion_tokens} < {floor} for {events} events")
    return Usage(prompt_tokens=prompt, completion_tokens=completion), problems


def completion_floor(events: int, max_tokens_cap: int) -> int:
    """The fewest completion tokens ``events`` relayed chunks can carry: the least a provider's
    report may say. (A stream the consumer cut is charged about one token per event instead: the
    fewest would let a consumer that hangs up on the last event pay an eighth; pipeline.py.)"""
    return min(max(events - STREAM_FRAMING_EVENTS, 0) // EVENTS_PER_TOKEN, max_tokens_cap)


def settle_media_usage(reported: Usage, unit: str, most: int) -> tuple[Usage, list[str]]:
    """A media request's units (media.md): the provider's measure, at most what the coordinator
    measured (audio) or asked for (images); it is never charged for more."""
    value = getattr(reported, unit)
    problems = []
    if value is None:
        problems.append(f"no {unit} reported")
        value = most
    elif value > most:
        problems.append(f"{unit} {value} > {most}")
    return Usage(prompt_tokens=0, completion_tokens=0, **{unit: min(value, most)}), problems
