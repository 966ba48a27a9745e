"""Consumer-blind mode (trust.md §9): the consumer seals to attested providers itself; the
coordinator routes among them and relays ciphertext, and never holds the prompt or the answer."""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

import httpx
import pytest

from darkbloom.client.blind import (
    MEDIA_TYPE,
    BlindResponseError,
    open_error,
    open_response,
    seal_to_providers,
)
from darkbloom.client.verify import parse_sse, verify_receipt
from tests.e2e.harness import MODEL, Coordinator, Provider

# These providers are self_signed (no operator CA here): local testing is what the opt-in is for.
LOCAL = {"insecure_accept_self_signed": True}


@pytest.fixture(scope="module")
def blind_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("blind")
    coordinator = Coordinator(workdir).start()
    providers = [Provider(coordinator, f"p{i}", threads=1).start() for i in range(2)]
    yield coordinator
    for provider in providers:
        provider.stop()
    coordinator.stop()


def _listing(stack: Coordinator) -> list[dict[str, Any]]:
    return list(httpx.get(f"{stack.base_url}/v1/providers/attestation").json()["providers"])


def _post(stack: Coordinator, content: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", content=content, timeout=60,
                      headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": MEDIA_TYPE})


def test_the_coordinator_never_sees_prompt_or_answer(blind_stack: Coordinator) -> None:
    canary = f"okapi-canary-{uuid.uuid4().hex[:10]}"
    body = {"model": MODEL, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": f"Repeat this word: {canary}"}]}
    sealed, channels = seal_to_providers(body, _listing(blind_stack), **LOCAL)
    assert canary.encode() not in sealed and len(channels) == 2
    response = _post(blind_stack, sealed)
    assert response.status_code == 200 and response.headers["content-type"] == MEDIA_TYPE
    assert b"chat.completion" not in response.content
    payloads = open_response(channels, response.headers["x-provider-id"], response.text, stream=False)
    reply = json.loads(payloads[0][len("data: "):])
    answer = reply["choices"][0]["message"]["content"]
    assert reply["object"] == "chat.completion" and answer
    # The receipt came sealed too; it verifies against the body and the request bytes.
    receipt = json.loads(payloads[1].removeprefix(": darkbloom-receipt "))
    steps = verify_receipt(receipt["receipt"], receipt["signature"], payloads[0][len("data: "):].encode(),
                           _listing(blind_stack), json.dumps(body).encode())
    assert all(step.ok for step in steps), steps
    assert "x-darkbloom-receipt" not in response.headers
    blind_stack.stop()  # flush logs and the request record
    blind_stack.start()
    blind_stack.wait_providers(2)
    db = blind_stack.workdir / "state" / "coordinator.db"
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    for where, text in {"log": blind_stack.log_text(), "database": dump}.items():
        assert canary not in text, where
        if len(answer.strip()) >= 12:
            assert answer.strip() not in text, where


def test_blind_stream_and_other_dialects(blind_stack: Coordinator) -> None:
    body = {"model": MODEL, "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "Say hello."}]}
    sealed, channels = seal_to_providers(body, _listing(blind_stack), providers=1, **LOCAL)
    response = _post(blind_stack, sealed, "/v1/messages")
    assert response.status_code == 200
    events = open_response(channels, response.headers["x-provider-id"], response.text, stream=True)
    assert events[0].startswith("event: message_start") and events[-1].startswith(": darkbloom-receipt")
    transcript, receipt, signature = parse_sse("\n\n".join(events))
    assert receipt is not None and signature is not None
    assert all(s.ok for s in verify_receipt(receipt, signature, transcript, _listing(blind_stack)))


def test_only_the_listed_providers_and_no_replays(blind_stack: Coordinator) -> None:
    listing = _listing(blind_stack)
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    sealed, channels = seal_to_providers(body, listing[:1], providers=1, **LOCAL)
    [only] = channels
    assert _post(blind_stack, sealed).headers["x-provider-id"] == only
    again = _post(blind_stack, sealed)  # the same envelope replayed: refused by the provider
    assert again.status_code == 409
    envelope = json.loads(sealed)
    envelope["sealed"][0]["provider_id"] = "no-such-provider"
    missing = _post(blind_stack, json.dumps(envelope).encode())
    assert missing.status_code == 503 and "sealed to" in missing.json()["error"]["message"]
    envelope["sealed"] = []
    assert _post(blind_stack, json.dumps(envelope).encode()).status_code == 400


# --- against a hostile coordinator (issue 8, items 2, 4, 10, 11) ----------------------------


def test_the_helper_trusts_no_listing_by_default(blind_stack: Coordinator) -> None:
    """Without pinned roots a coordinator could list providers it runs itself: refused unless
    the caller opts in by name; with roots, a self-signed provider is never chosen, whatever
    trust level the listing claims for it."""
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    listing = _listing(blind_stack)
    with pytest.raises(ValueError, match="pin the root CAs"):
        seal_to_providers(body, listing)
    from tests.ca import CA

    lying = [{**p, "trust_level": "hardware"} for p in listing]
    with pytest.raises(LookupError):
        seal_to_providers(body, lying, root_cas=[CA().cert])
    # A listing entry whose blob binds another encryption key (a coordinator substituting its
    # own X25519 key) is skipped even in local-testing mode.
    swapped = [{**p, "encryption_public_key": listing[0]["encryption_public_key"]} for p in listing[1:]]
    with pytest.raises(LookupError):
        seal_to_providers(body, swapped, **LOCAL)


def test_altered_reordered_or_truncated_answers_are_refused(blind_stack: Coordinator) -> None:
    body = {"model": MODEL, "max_tokens": 6, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Count to five."}]}
    sealed, sessions = seal_to_providers(body, _listing(blind_stack), providers=1, **LOCAL)
    response = _post(blind_stack, sealed)
    assert response.status_code == 200
    pid = response.headers["x-provider-id"]
    open_response(sessions, pid, response.text, stream=True)  # the genuine answer checks out
    events = [line for line in response.text.splitlines() if line.startswith("data: {")]
    assert len(events) >= 3
    swapped = [events[1], events[0], *events[2:]]
    dropped_tail = events[:-2]  # the receipt and [DONE]: a truncated answer
    renumbered = [json.dumps({**json.loads(e[6:]), "seq": i}) for i, e in enumerate(events[1:])]
    for forged in (swapped, dropped_tail, ["data: " + e for e in renumbered]):
        with pytest.raises(BlindResponseError):
            open_response(sessions, pid, "\n\n".join(forged), stream=True)
    with pytest.raises(BlindResponseError):  # answered "from" a provider it was not sealed to
        open_response(sessions, "someone-else", response.text, stream=True)


def test_refusals_carry_status_and_code_in_clear_and_the_words_sealed(blind_stack: Coordinator) -> None:
    secret = f"tapir_{uuid.uuid4().hex[:8]}"
    body = {"model": MODEL, "max_tokens": 2, secret: True,
            "messages": [{"role": "user", "content": "hi"}]}
    sealed, sessions = seal_to_providers(body, _listing(blind_stack), providers=1, **LOCAL)
    response = _post(blind_stack, sealed)
    assert response.status_code == 400 and secret not in response.text
    error = response.json()
    assert error["error"]["code"] == "unknown_parameter" and error["error"]["param"] is None
    words = open_error(sessions, error)
    assert secret in words["message"] and words["param"] == secret
    assert secret not in blind_stack.log_text()


def test_an_oversized_entry_is_refused_before_any_provider_sees_it(blind_stack: Coordinator) -> None:
    """A sealed entry a provider's socket could not carry never reaches one (it used to close
    the socket with 1009 and abort everything in flight on it)."""
    listing = _listing(blind_stack)
    entry = {"provider_id": listing[0]["provider_id"],
             "encryption_public_key": listing[0]["encryption_public_key"],
             "ephemeral_public_key": listing[0]["encryption_public_key"],
             "ciphertext": "A" * (11 * 1024 * 1024)}
    envelope = {"v": 2, "model": MODEL, "stream": False, "sealed": [entry]}
    response = _post(blind_stack, json.dumps(envelope).encode())
    assert response.status_code == 413 and response.json()["error"]["param"] == "sealed[0].ciphertext"
    assert blind_stack.provider_count() == 2
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    sealed, sessions = seal_to_providers(body, _listing(blind_stack), **LOCAL)
    ok = _post(blind_stack, sealed)
    assert ok.status_code == 200
    open_response(sessions, ok.headers["x-provider-id"], ok.text, stream=False)
