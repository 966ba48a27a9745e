"""PromptBuilder tokenizes with one llama.cpp call (issue 14), on the default model's vocabulary:
llama-cpp-python sized its buffer by the training context, 0 for a vocabulary-only model, so the
coordinator tokenized every prompt twice in its time to first token."""

from __future__ import annotations

import random
from typing import Any

import llama_cpp
import pytest

from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import parse_chat


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    path = DEFAULT_MODEL.weights_path()
    assert path is not None
    return PromptBuilder.vocab_only(path)


def test_one_call_per_tokenization_with_llama_cpp_python_s_tokens(
        builder: PromptBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = llama_cpp.llama_tokenize

    def counted(*args: Any) -> int:
        calls.append(1)
        return int(real(*args))

    request = parse_chat({"model": DEFAULT_MODEL.id,
                          "messages": [{"role": "user", "content": "Name three colours."}]})
    expected = list(builder._llama.tokenize(builder.render_chat(request).encode(), add_bos=True,
                                            special=True))
    monkeypatch.setattr(llama_cpp, "llama_tokenize", counted)
    assert builder.tokens(request) == expected
    assert builder.count("Red, green and blue.") > 0
    assert len(calls) == 2


def test_any_text_tokenizes_as_llama_cpp_python_does(builder: PromptBuilder) -> None:
    pieces = ["a", " ", "é", "😀", "<|im_start|>", "<|im_end|>", "\n", "\x00", "\ufffd", "  ", "ab"]
    rng = random.Random(14)
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))).encode()
        for add_bos in (True, False):
            for special in (True, False):
                assert builder._tokenize(text, add_bos, special) == list(
                    builder._llama.tokenize(text, add_bos=add_bos, special=special))
