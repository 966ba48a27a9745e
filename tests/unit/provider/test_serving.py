"""RequestServer end to end over sealed frames, with the scripted engine: every dialect gets
``<think>`` reasoning split out of the answer, including tags split across engine deltas."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

from darkbloom.crypto import KeyPair, SessionChannel
from darkbloom.protocol.blind import CONSUMER_SEALED
from darkbloom.protocol.frames import (
    InferenceAccepted,
    InferenceComplete,
    InferenceError,
    InferenceRequest,
    InferenceResponseChunk,
    Sealed,
)
from darkbloom.protocol.trust import SignedReceipt
from darkbloom.provider.engines.scripted import ScriptedEngine
from darkbloom.provider.serving import ReplayGuard, RequestServer

MODEL = "scripted-model"
PIECES = ["<thi", "nk>Let me", " think.</th", "ink>\n\nThe", " answer", "."]


async def serve(endpoint: str, body: dict[str, Any], pieces: list[str] = PIECES
                ) -> tuple[list[str], list[BaseModel]]:
    provider = KeyPair.generate()
    session = KeyPair.generate()
    channel = SessionChannel(session, provider.public, "requester")
    frames: list[BaseModel] = []

    async def send(frame: BaseModel) -> None:
        frames.append(frame)

    server = RequestServer(ScriptedEngine(pieces), provider, send)
    request = InferenceRequest(
        request_id="r1", encrypted_body=sealed(channel, session, json.dumps(body).encode()),
        model=body["model"], endpoint=endpoint, stream=bool(body.get("stream")),  # type: ignore[arg-type]
        max_tokens_cap=100)
    await server.serve(request, threading.Event())
    chunks = [f for f in frames if isinstance(f, InferenceResponseChunk)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    payloads = [channel.open("response", "r1", c.seq, c.encrypted_data.ciphertext).decode()
                for c in chunks if c.encrypted_data]
    RECEIPT_COMMENTS[:] = [p for p in payloads if p.startswith(":")]
    return [p for p in payloads if not p.startswith(":")], frames


def sealed(channel: SessionChannel, session: KeyPair, body: bytes) -> Sealed:
    return Sealed(ephemeral_public_key=session.public_b64, ciphertext=channel.seal("request", "", 0, body))


RECEIPT_COMMENTS: list[str] = []  # the receipt comment lines of the last serve() call


def data(payload: str) -> dict[str, Any]:
    return dict(json.loads(payload.split("data: ", 1)[1]))


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "q"}]}


async def test_chat_non_streaming_splits_reasoning() -> None:
    payloads, frames = await serve("/v1/chat/completions", CHAT)
    assert isinstance(frames[0], InferenceAccepted) and isinstance(frames[-1], InferenceComplete)
    [body] = payloads
    message = data(body)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "The answer.",
                       "reasoning_content": "Let me think."}


async def test_chat_streaming_splits_reasoning_across_chunks() -> None:
    payloads, _ = await serve("/v1/chat/completions", {**CHAT, "stream": True})
    assert payloads[-1] == "data: [DONE]"
    deltas = [data(p)["choices"][0]["delta"] for p in payloads[:-1] if data(p)["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content") or "" for d in deltas) == "The answer."
    assert not any("<" in (d.get("content") or "") for d in deltas)


async def test_unclosed_think_is_all_reasoning() -> None:
    payloads, _ = await serve("/v1/chat/completions", CHAT, ["Sure. <think>still", " going"])
    message = data(payloads[0])["choices"][0]["message"]
    assert message["content"] == "Sure. " and message["reasoning_content"] == "still going"


async def test_text_completion_stays_raw() -> None:
    payloads, _ = await serve("/v1/completions", {"model": MODEL, "prompt": "p"})
    assert data(payloads[0])["choices"][0]["text"] == "".join(PIECES)


async def test_messages_thinking_block() -> None:
    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "q"}]}
    payloads, _ = await serve("/v1/messages", body)
    content = data(payloads[0])["content"]
    assert content == [{"type": "thinking", "thinking": "Let me think.", "signature": ""},
                       {"type": "text", "text": "The answer."}]
    payloads, _ = await serve("/v1/messages", {**body, "stream": True})
    events = [data(p) for p in payloads]
    names = [e["type"] for e in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["thinking", "text"]
    assert [s["index"] for s in starts] == [0, 1]
    thinking = "".join(e["delta"].get("thinking", "") for e in events if e["type"] == "content_block_delta")
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert (thinking, text) == ("Let me think.", "The answer.")
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_stop") == 2


async def test_responses_reasoning_item() -> None:
    body = {"model": MODEL, "input": "q"}
    payloads, _ = await serve("/v1/responses", body)
    output = data(payloads[0])["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]
    assert output[0]["summary"][0]["text"] == "Let me think."
    assert output[1]["content"][0]["text"] == "The answer."
    payloads, _ = await serve("/v1/responses", {**body, "stream": True})
    events = [data(p) for p in payloads]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message"]
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert (summary, text) == ("Let me think.", "The answer.")
    final = events[-1]
    assert final["type"] == "response.completed"
    assert [i["type"] for i in final["response"]["output"]] == ["reasoning", "message"]


async def test_bad_body_is_refused_with_400_and_no_text() -> None:
    canary = "canary-in-role-text-0f3a"
    payloads, frames = await serve("/v1/chat/completions",
                                   {"model": MODEL, "messages": [{"role": "user"}], "x": canary})
    assert payloads == []
    [error] = frames
    assert isinstance(error, InferenceError) and error.status_code == 400
    assert canary not in error.error


async def test_stock_sdk_models_read_the_reasoning() -> None:
    """The bytes the provider makes parse into each stock SDK's own response types, with the
    reasoning where each SDK looks for it (the default model never emits <think>, so this is
    where the SDK side of reasoning is checked)."""
    import anthropic.types
    import openai.types.chat
    import openai.types.responses

    payloads, _ = await serve("/v1/chat/completions", CHAT)
    chat = openai.types.chat.ChatCompletion.model_validate(data(payloads[0]))
    assert chat.choices[0].message.content == "The answer."
    assert (chat.choices[0].message.model_extra or {})["reasoning_content"] == "Let me think."

    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "q"}]}
    payloads, _ = await serve("/v1/messages", body)
    message = anthropic.types.Message.model_validate(data(payloads[0]))
    thinking, text = message.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock) and thinking.thinking == "Let me think."
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "The answer."

    payloads, _ = await serve("/v1/responses", {"model": MODEL, "input": "q"})
    response = openai.types.responses.Response.model_validate(data(payloads[0]))
    assert response.output_text == "The answer."
    reasoning = response.output[0]
    assert isinstance(reasoning, openai.types.responses.ResponseReasoningItem)
    assert reasoning.summary[0].text == "Let me think."


CALL_PIECES = ['{"name": "get_time", ', '"arguments": {"tz": "UTC"}}']
TIME_TOOL = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("/v1/chat/completions", CHAT, PIECES),
    ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, PIECES),
    ("/v1/chat/completions", {**CHAT, "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "get_time", "parameters": TIME_TOOL}}]}, CALL_PIECES),
    ("/v1/completions", {"model": MODEL, "prompt": "p"}, PIECES),
    ("/v1/messages", {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "q"}]},
     PIECES),
    ("/v1/messages", {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "q"}],
                      "tool_choice": {"type": "any"},
                      "tools": [{"name": "get_time", "input_schema": TIME_TOOL}]}, CALL_PIECES),
    ("/v1/responses", {"model": MODEL, "input": "q"}, PIECES),
    ("/v1/responses", {"model": MODEL, "input": "q", "tool_choice": "required",
                       "tools": [{"type": "function", "name": "get_time", "parameters": TIME_TOOL}]},
     CALL_PIECES),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("endpoint", "body", "pieces"), CASES)
async def test_every_payload_validates_against_the_stock_sdk_types(
        endpoint: str, body: dict[str, Any], pieces: list[str], stream: bool) -> None:
    """Strict validation (not the SDKs' lenient construct) of every body and stream event."""
    import anthropic.types
    import openai.types
    import openai.types.chat
    import openai.types.responses

    if stream:
        body = {**body, "stream": True}
    elif "stream_options" in body:
        return
    whole, event = {
        "/v1/chat/completions": (openai.types.chat.ChatCompletion, openai.types.chat.ChatCompletionChunk),
        "/v1/completions": (openai.types.Completion, openai.types.Completion),
        "/v1/messages": (anthropic.types.Message, anthropic.types.RawMessageStreamEvent),
        "/v1/responses": (openai.types.responses.Response, openai.types.responses.ResponseStreamEvent),
    }[endpoint]
    payloads, frames = await serve(endpoint, body, pieces)
    assert isinstance(frames[-1], InferenceComplete)
    if not stream:
        TypeAdapter(whole).validate_python(data(payloads[0]))
        return
    for payload in payloads:
        obj = data(payload) if payload != "data: [DONE]" else None
        if obj is None or obj.get("type") == "ping":  # the SDK handles ping outside its union
            continue
        if endpoint == "/v1/completions" and obj["choices"][0]["finish_reason"] is None:
            # OpenAI's own streamed completions send null here too; the SDK's type omits it.
            obj["choices"][0]["finish_reason"] = "stop"
        TypeAdapter(event).validate_python(obj)



@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
async def test_streamed_receipt_signs_the_transcript(endpoint: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "stream": True}
    body.update({"/v1/chat/completions": {"messages": [{"role": "user", "content": "q"}]},
                 "/v1/messages": {"messages": [{"role": "user", "content": "q"}], "max_tokens": 9},
                 "/v1/responses": {"input": "q"}}[endpoint])
    payloads, frames = await serve(endpoint, body)
    [line] = RECEIPT_COMMENTS
    signed = SignedReceipt.parse(line.removeprefix(": darkbloom-receipt "))
    assert signed is not None and signed.valid()
    receipt = signed.receipt
    transcript = b"".join((p.split("data: ", 1)[1] + "\n").encode() for p in payloads
                          if p != "data: [DONE]")
    assert receipt.response_sha256 == hashlib.sha256(transcript).hexdigest()
    assert receipt.request_sha256 == hashlib.sha256(json.dumps(body).encode()).hexdigest()
    assert receipt.v == 2 and receipt.request_id == "r1"
    complete = frames[-1]
    assert isinstance(complete, InferenceComplete) and complete.receipt == signed
    assert receipt.endpoint == endpoint and receipt.completion_tokens == len(PIECES)


async def test_non_streamed_receipt_signs_the_body() -> None:
    payloads, frames = await serve("/v1/chat/completions", CHAT)
    assert RECEIPT_COMMENTS == []
    complete = frames[-1]
    assert isinstance(complete, InferenceComplete) and complete.receipt is not None
    assert complete.receipt.valid()
    body = payloads[0].removeprefix("data: ").encode()
    assert complete.receipt.receipt.response_sha256 == hashlib.sha256(body).hexdigest()


async def test_bodies_sealed_to_another_key_or_tampered_are_refused() -> None:
    provider, stranger, session = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    frames: list[BaseModel] = []

    async def send(frame: BaseModel) -> None:
        frames.append(frame)

    server = RequestServer(ScriptedEngine(PIECES), provider, send)
    body = json.dumps(CHAT).encode()
    to_stranger = sealed(SessionChannel(session, stranger.public, "requester"), session, body)
    good = sealed(SessionChannel(session, provider.public, "requester"), session, body)
    tampered = Sealed(ephemeral_public_key=good.ephemeral_public_key,
                      ciphertext=good.ciphertext[:-6] + "AAAAA=")
    low_order = Sealed(ephemeral_public_key="A" * 43 + "=", ciphertext=good.ciphertext)
    for envelope in (to_stranger, tampered, low_order):
        frames.clear()
        await server.serve(InferenceRequest(request_id="r", encrypted_body=envelope, model=MODEL,
                                            endpoint="/v1/chat/completions", stream=False,
                                            max_tokens_cap=10), threading.Event())
        [error] = frames
        assert isinstance(error, InferenceError) and error.status_code == 400
        assert "could not be decrypted" in error.error


# --- consumer-blind mode: refusals sealed, replays refused (issue 8, items 11 and 5) --------


async def serve_blind(server: RequestServer, frames: list[BaseModel], provider: KeyPair,
                      body: bytes, rid: str = "rb", session: KeyPair | None = None
                      ) -> tuple[SessionChannel, KeyPair]:
    session = session or KeyPair.generate()
    channel = SessionChannel(session, provider.public, "requester")
    frames.clear()
    await server.serve(InferenceRequest(
        request_id=rid, model=MODEL, encrypted_body=Sealed(
            ephemeral_public_key=session.public_b64,
            ciphertext=channel.seal("request", CONSUMER_SEALED, 0, body)),  # as the consumer seals
        endpoint="/v1/chat/completions", stream=False, max_tokens_cap=10, sealed_by="consumer"),
        threading.Event())
    return channel, session


def blind_rig() -> tuple[RequestServer, list[BaseModel], KeyPair]:
    provider = KeyPair.generate()
    frames: list[BaseModel] = []

    async def send(frame: BaseModel) -> None:
        frames.append(frame)

    return RequestServer(ScriptedEngine(PIECES), provider, send), frames, provider


async def test_a_blind_refusal_says_nothing_of_the_request_in_the_clear() -> None:
    server, frames, provider = blind_rig()
    secret = "zebra_secret_field"
    body = json.dumps({**CHAT, secret: 1}).encode()
    channel, _ = await serve_blind(server, frames, provider, body)
    [error] = frames
    assert isinstance(error, InferenceError) and error.status_code == 400
    assert error.code == "unknown_parameter" and error.param is None
    assert secret not in error.model_dump_json()
    assert error.sealed_message is not None
    words = json.loads(channel.open("error", "rb", 0, error.sealed_message))
    assert secret in words["message"] and words["param"] == secret


async def test_blind_replays_are_refused_and_the_guard_is_bounded() -> None:
    server, frames, provider = blind_rig()
    body = json.dumps(CHAT).encode()
    _, session = await serve_blind(server, frames, provider, body)
    assert isinstance(frames[-1], InferenceComplete)
    await serve_blind(server, frames, provider, body, rid="again", session=session)
    [error] = frames
    assert isinstance(error, InferenceError) and error.status_code == 409
    # Garbage that does not open is never remembered, so it cannot fill the guard...
    garbage = Sealed(ephemeral_public_key=KeyPair.generate().public_b64, ciphertext="AAAA" * 20)
    await server.serve(InferenceRequest(
        request_id="g", encrypted_body=garbage, model=MODEL, endpoint="/v1/chat/completions",
        stream=False, max_tokens_cap=10, sealed_by="consumer"), threading.Event())
    assert len(server.replays._seen) == 1
    # ...and a full guard refuses rather than forgetting a live key early.
    server.replays._limit = 1
    await serve_blind(server, frames, provider, body, rid="full")
    [busy] = frames
    assert isinstance(busy, InferenceError) and busy.status_code == 503


def test_the_replay_guard_forgets_after_the_window() -> None:
    guard = ReplayGuard(window_s=0.0)
    guard.admit("k")
    guard.admit("k")  # the window has passed: remembered again, not a replay
