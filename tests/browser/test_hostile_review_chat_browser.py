"""Hostile review of the Chat page in Chromium: a coordinator that rewrites what it relays (it
serves the page, the stream and the listing), against a real provider that signs honestly.

The question each test asks: can Verify say "Verified" for an answer that is not the answer to
what the user asked, with the model the user chose? Each test was a finding (a strict xfail);
they pass now that Verify checks the request hash against the bytes the page sent, the receipt's
model against the one asked for, and says "Not verified" when a step could not run.
"""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import Locator, Page, Request, Route, expect

from tests.browser.conftest import Ui
from tests.browser.test_chat import LONG, open_chat, send


def verdict_after_verify(answer: Locator) -> str:
    """Click Verify and return the verdict once the checks have run."""
    expect(answer.get_by_role("button", name="Verify")).to_be_enabled(timeout=LONG)
    answer.get_by_role("button", name="Verify").click()
    verdict = answer.locator(".verify-verdict")
    expect(verdict).to_have_text(re.compile(r"^(Verified|Not verified|Could not verify)"), timeout=LONG)
    return verdict.inner_text()


def rewrite_request(page: Page, change: Any) -> None:
    """A coordinator that changes the request body before sealing it to the provider."""
    def handler(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        change(body)
        route.continue_(post_data=json.dumps(body))
    page.route("**/v1/chat/completions", handler)


def test_an_answer_to_a_prompt_the_coordinator_rewrote_is_not_verified(ui: Ui) -> None:
    page = open_chat(ui)

    def swap_prompt(body: dict[str, Any]) -> None:
        body["messages"][-1]["content"] = "Reply with the single word: pineapple."

    rewrite_request(page, swap_prompt)
    answer = send(page, "Name a colour.", max_tokens=8)
    assert verdict_after_verify(answer).startswith("Not verified")


def test_an_earlier_answer_replayed_for_a_new_question_is_not_verified(ui: Ui) -> None:
    page = open_chat(ui)
    saved: dict[str, Any] = {}

    def record(route: Route) -> None:
        response = route.fetch(timeout=LONG)
        saved["body"], saved["headers"] = response.body(), response.headers
        route.fulfill(response=response, body=saved["body"])

    page.route("**/v1/chat/completions", record)
    first = send(page, "Say yes.", max_tokens=8)
    assert verdict_after_verify(first) == "Verified: every check passed."
    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions",
               lambda route: route.fulfill(status=200, body=saved["body"], headers=saved["headers"]))
    second = send(page, "Now write a poem about the sea.", max_tokens=8)
    assert verdict_after_verify(second).startswith("Not verified")


def test_an_answer_from_another_model_than_chosen_is_not_verified(ui: Ui) -> None:
    page = open_chat(ui)
    # The page's catalog (coordinator data) lists a premium model; the user picks it.
    page.evaluate("""() => {
      const select = document.getElementById('chat-model');
      const option = new Option('Premium 405B', 'premium-405b', true, true);
      option.dataset.weightHash = 'f'.repeat(64);
      select.add(option);
      select.value = 'premium-405b';
    }""")

    def downgrade(body: dict[str, Any]) -> None:
        assert body["model"] == "premium-405b"
        body["model"] = "smollm2-135m"

    rewrite_request(page, downgrade)
    answer = send(page, "Say hi.", max_tokens=8)
    assert verdict_after_verify(answer).startswith("Not verified")


def test_a_verdict_with_an_unchecked_step_does_not_say_every_check_passed(ui: Ui) -> None:
    page = open_chat(ui)
    page.evaluate("() => { for (const o of document.getElementById('chat-model').options) "
                  "o.dataset.weightHash = ''; }")
    answer = send(page, "Say ok.", max_tokens=8)
    verdict = verdict_after_verify(answer)
    expect(answer.locator(".verify-steps .step.skip")).to_have_count(1)
    assert verdict != "Verified: every check passed."


def test_trust_badge_markup_and_stored_text(ui: Ui) -> None:
    """Header and model markup stay text; prompt and answer live only in sessionStorage's
    conversation (no reasoning, no receipt, nothing in localStorage, cookies, IndexedDB or caches)."""
    page = open_chat(ui)
    reasoning = "SECRET-REASONING</details><b>x</b>"
    events = [{"choices": [{"index": 0, "delta": {"reasoning_content": reasoning}}]},
              {"choices": [{"index": 0, "delta": {"content": "ANSWER-TEXT <think>t</think>"}}]}]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=body, headers={
        "content-type": "text/event-stream", "x-provider-trust-level": "<img src=x onerror=alert(1)>",
        "x-provider-chip": "<script>alert(1)</script>" + "A" * 200, "x-provider-attested": "true"}))
    answer = send(page, "PROMPT-TEXT")
    badge = answer.locator(".badge.trust")
    expect(badge).to_contain_text("<img src=x onerror=alert(1)>"[:32])
    assert badge.locator("*").count() == 0 and answer.locator("img, script, b").count() == 0
    expect(badge).to_have_class(re.compile(r"\bwarn\b"))
    stored = page.evaluate("""async () => ({
      local: localStorage.length, session: {...sessionStorage}, cookie: document.cookie,
      dbs: indexedDB.databases ? (await indexedDB.databases()).length : 0,
      caches: self.caches ? (await caches.keys()).length : 0})""")
    assert stored["local"] == 0 and stored["dbs"] == 0 and stored["caches"] == 0
    assert "PROMPT" not in stored["cookie"] and "ANSWER" not in stored["cookie"]
    [(name, value)] = stored["session"].items()
    assert name == f"darkbloom.chat.{ui.account_id()}"
    assert "PROMPT-TEXT" in value and "ANSWER-TEXT" in value and "SECRET-REASONING" not in value
