"""The prefix cache through the whole stack (docs/security.md "The prefix cache"): an account's
next turn reuses its own conversation's KV and says so in OpenAI's
``usage.prompt_tokens_details.cached_tokens``; another account sending the very same
conversation reuses nothing."""

from __future__ import annotations

import openai

from tests.e2e.harness import Coordinator, _cli

MODEL = "smollm2-135m"
OTHER = "prefix-cache-other"


def turn(client: openai.OpenAI, messages: list[dict[str, str]]) -> tuple[str, int]:
    answer = client.chat.completions.create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                                            max_tokens=16, temperature=0)
    assert answer.usage is not None
    details = answer.usage.prompt_tokens_details
    return answer.choices[0].message.content or "", (details.cached_tokens or 0) if details else 0


def test_only_the_same_account_reuses_its_prefix(stack: Coordinator) -> None:
    mine = stack.client()
    key = _cli(["keys", "create", "--account", OTHER], stack.env)
    _cli(["admin", "credit", "--account", OTHER, "--amount", "10"], stack.env)
    theirs = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)

    first = [{"role": "user", "content": "Name a famous lighthouse."}]
    text, cached = turn(mine, first)
    assert cached == 0
    follow = [*first, {"role": "assistant", "content": text},
              {"role": "user", "content": "Where is it?"}]
    answer, cached = turn(mine, follow)
    assert cached > 0  # the first turn's prompt (and answer) were not read again

    # Streamed, with usage asked for: the same field on the usage chunk.
    stream = mine.chat.completions.create(
        model=MODEL, messages=[*follow, {"role": "assistant", "content": answer},  # type: ignore[list-item]
                               {"role": "user", "content": "Thanks."}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens_details is not None
    assert (usage[0].prompt_tokens_details.cached_tokens or 0) > cached

    _, cached = turn(theirs, follow)  # the same tokens, another account: nothing reused
    assert cached == 0
