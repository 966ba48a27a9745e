"""The Chat page in Chromium against a real provider: a streamed answer with its speed and trust,
the receipt verified in the browser (and failing on a tampered answer), stop, retry, the history
kept in the tab, and model output that stays text."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Dialog, Locator, Page, Route, expect

from tests.browser.conftest import Ui
from tests.browser.test_accessibility import AUDIT

LONG = 120_000  # ms: a CPU provider shares two cores with the browser and the coordinator
STEPS = ["stream holds only events the receipt covers", "receipt is a well-formed v2 receipt",
         "provider is in the attestation listing",
         "attestation blob is signed by that identity key and binds the receipt's encryption key",
         "response hash matches the bytes received", "request hash matches the body sent",
         "receipt signature is valid", "model is the one asked for",
         "weights are the catalog's for this model"]


def open_chat(ui: Ui) -> Page:
    """A new, funded account on the chat page."""
    ui.sign_up()
    ui.stack.credit(ui.account_id(), 5_000_000)
    ui.goto("/chat")
    return ui.page


def send(page: Page, text: str, max_tokens: int = 16) -> Locator:
    """Send a message and return its answer once the stream has ended."""
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.turn.assistant").last
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=LONG)
    return answer


def step_results(answer: Locator) -> dict[str, str]:
    expect(answer.locator(".verify-steps li").first).to_be_visible(timeout=LONG)
    rows = answer.locator(".verify-steps li")
    return {rows.nth(i).locator(".step-name").inner_text(): rows.nth(i).locator(".step-result").inner_text()
            for i in range(rows.count())}


def test_signed_out_chat_asks_to_sign_in(ui: Ui) -> None:
    ui.goto("/chat")
    expect(ui.page).to_have_url(ui.stack.url + "/signin?next=/chat")


def test_streamed_answer_shows_speed_and_trust_and_its_receipt_verifies(ui: Ui) -> None:
    page = open_chat(ui)
    expect(page.get_by_label("Model")).to_have_value("smollm2-135m")
    answer = send(page, "Say hello in five words.", max_tokens=24)
    expect(answer.locator(".message.error")).to_be_empty()
    expect(answer.locator(".answer-body")).not_to_be_empty()
    expect(answer.locator(".stat-ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(answer.locator(".stat-tps")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(answer.locator(".stat-tokens")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(answer.locator(".badge.trust")).to_contain_text("Trust: self-signed")
    expect(answer.locator(".badge.trust")).to_contain_text("attested key")

    answer.get_by_role("button", name="Verify").click()
    expect(answer.locator(".verify-verdict")).to_have_text("Verified: every check passed.", timeout=LONG)
    assert step_results(answer) == {name: "passed" for name in STEPS}
    assert page.evaluate(AUDIT) == []  # contrast, labels and names with an answer on the page
    ui.shot("chat")

    # Only the conversation is kept, in this tab: no key, no receipt, nothing in localStorage.
    stored = page.evaluate("() => ({local: localStorage.length, session: {...sessionStorage}})")
    assert stored["local"] == 0
    [(name, value)] = stored["session"].items()
    assert name == f"darkbloom.chat.{ui.account_id()}"
    assert [t["role"] for t in json.loads(value)["turns"]] == ["user", "assistant"]
    assert "sk-db-" not in value and "receipt" not in value

    page.reload()
    expect(page.locator("article.turn.user")).to_have_text(re.compile("Say hello in five words"))
    expect(page.locator("article.turn.assistant")).to_have_count(1)

    # Retry asks again for the last message: still one question, one (new) answer.
    page.get_by_label("Max tokens").fill("12")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=LONG)
    expect(page.locator("article.turn.user")).to_have_count(1)
    expect(page.locator("article.turn.assistant")).to_have_count(1)
    retried = page.locator("article.turn.assistant")
    expect(retried.get_by_role("button", name="Verify")).to_be_enabled()
    expect(retried.locator(".stat-tokens")).to_have_text(re.compile(r"^[1-9]\d*$"))


def tamper(route: Route) -> None:
    """The real answer with one letter of its content changed: what a meddling relay would do."""
    response = route.fetch(timeout=LONG)
    body = response.text()
    changed = re.sub(r'("content":" *)([A-Za-z0-9])',
                     lambda m: m[1] + ("Q" if m[2] != "Q" else "Z"), body, count=1)
    assert changed != body
    route.fulfill(response=response, body=changed)


def test_a_tampered_answer_fails_the_response_hash_step(ui: Ui) -> None:
    page = open_chat(ui)
    page.route("**/v1/chat/completions", tamper)
    answer = send(page, "Name three colours.", max_tokens=16)
    answer.get_by_role("button", name="Verify").click()
    expect(answer.locator(".verify-verdict")).to_have_text(
        "Not verified: response hash matches the bytes received failed.", timeout=LONG)
    results = step_results(answer)
    assert results == {name: "failed" if name == "response hash matches the bytes received"
                       else "passed" for name in STEPS}
    expect(answer.locator(".step.bad .step-detail")).to_have_text(re.compile(r"^sha256 [0-9a-f]{64}$"))
    assert page.evaluate(AUDIT) == []
    ui.shot("chat-verify-failed")


def test_stop_leaves_a_stopped_answer_and_the_next_one_streams(ui: Ui) -> None:
    page = open_chat(ui)
    page.get_by_label("Max tokens").fill("2000")
    page.get_by_label("Message").fill("Write a very long story about a dragon and a lighthouse.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.turn.assistant").last
    expect(answer.locator(".stat-tokens")).to_have_text(re.compile(r"^([3-9]|\d{2,})$"), timeout=LONG)
    page.get_by_role("button", name="Stop").click()
    expect(answer.locator(".answer-note")).to_contain_text("Stopped.")
    expect(answer.get_by_role("button", name="Verify")).to_be_disabled()
    expect(answer.locator(".answer-body")).not_to_be_empty()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()

    # The provider was freed: the next answer streams in full.
    second = send(page, "Thanks. Say goodbye.", max_tokens=8)
    expect(second.get_by_role("button", name="Verify")).to_be_enabled()
    expect(page.locator("article.turn.assistant")).to_have_count(2)


HOSTILE = [
    "<img src=x onerror=alert(1)> <script>alert(2)</script>\n\n",
    "# Title\n\n**bold** and *it* and `<b>code</b>` and [bad](javascript:alert(3)) and "
    "[good](https://example.com/page)\n\n",
    "- one\n- two\n\n```html\n<iframe src=\"https://example.com\"></iframe>\n```\n",
]


def fake_stream(route: Route) -> None:
    """A stream from a hostile model: markup in every form, and no receipt."""
    events = [{"choices": [{"index": 0, "delta": {"reasoning_content": "<b>plan</b>"}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": text}}]} for text in HOSTILE]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    route.fulfill(status=200, body=body, headers={
        "content-type": "text/event-stream", "x-provider-trust-level": "hardware",
        "x-provider-chip": "<b>M9</b>", "x-provider-attested": "true"})


def test_model_output_stays_text(ui: Ui) -> None:
    page = open_chat(ui)
    dialogs: list[str] = []

    def dialog_opened(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dialog_opened)
    page.route("**/v1/chat/completions", fake_stream)
    answer = send(page, "Show me some HTML.")
    body = answer.locator(".answer-body")
    expect(body).to_contain_text("<img src=x onerror=alert(1)> <script>alert(2)</script>")
    assert body.locator("img, script, iframe, b").count() == 0
    expect(body.locator("h3")).to_have_text("Title")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("em")).to_have_text("it")
    expect(body.locator("code").first).to_have_text("<b>code</b>")
    expect(body.locator("li")).to_have_count(2)
    expect(body.locator("pre code")).to_have_text('<iframe src="https://example.com"></iframe>')
    links = body.locator("a")
    expect(links).to_have_count(1)
    expect(links).to_have_attribute("href", "https://example.com/page")
    expect(links).to_have_attribute("rel", "noopener noreferrer")
    expect(body).to_contain_text("[bad](javascript:alert(3))")
    answer.locator("summary", has_text="Thinking").click()
    expect(answer.locator(".thinking-text")).to_have_text("<b>plan</b>")
    expect(answer.locator(".badge.trust")).to_have_text("Trust: hardware-attested · <b>M9</b> · attested key")
    expect(answer.get_by_role("button", name="Verify")).to_be_disabled()
    expect(answer.locator(".answer-note")).to_contain_text("without a receipt")
    assert dialogs == []


def test_an_unfunded_account_is_told_why_in_words(ui: Ui) -> None:
    ui.expect_status(402)
    ui.sign_up()
    ui.goto("/chat")
    answer = send(ui.page, "Hello?")
    expect(answer.locator(".message.error")).to_contain_text(re.compile("balance|credit", re.I))
    expect(answer.get_by_role("button", name="Verify")).to_be_disabled()
    expect(ui.page.get_by_role("button", name="Retry")).to_be_enabled()
