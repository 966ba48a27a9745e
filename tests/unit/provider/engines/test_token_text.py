"""Token bytes to text (llamacpp.TokenText, piece_text): a max_tokens cut inside a multi-byte
character drops the incomplete tail, never sends U+FFFD; logprob text shows partial bytes."""

from __future__ import annotations

import pytest

from darkbloom.provider.engines.llamacpp import TokenText, piece_text

EMOJI = "😀".encode()  # 4 bytes, which byte-level BPE often splits over tokens


def decode(pieces: list[bytes]) -> str:
    text = TokenText()
    return "".join(text.feed(p) for p in pieces) + text.finish()


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_an_incomplete_tail_is_dropped(cut: int) -> None:
    assert decode([b"ok ", EMOJI, EMOJI[:cut]]) == "ok 😀"


def test_a_character_split_over_pieces_is_joined() -> None:
    assert decode([b"a", EMOJI[:1], EMOJI[1:3], EMOJI[3:], "é".encode()]) == "a😀é"


def test_invalid_bytes_mid_stream_are_still_replaced() -> None:
    assert decode([b"a\xff", b"b", EMOJI[:2], b"c"]) == "a\ufffdb\ufffdc"


def test_finish_leaves_nothing_for_a_next_request() -> None:
    text = TokenText()
    text.feed(EMOJI[:2])
    assert text.finish() == ""
    assert text.feed(b"x") == "x"


@pytest.mark.parametrize(("piece", "shown"), [
    (EMOJI[:2], "\\xf0\\x9f"), (b"hi", "hi"), (b" \xc3", " \\xc3"), (EMOJI, "😀"),
])
def test_logprob_text_of_partial_bytes_has_no_replacement_character(piece: bytes, shown: str) -> None:
    assert piece_text(piece) == shown
