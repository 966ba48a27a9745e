"""Generated requests at every route of a real coordinator with a real provider (issue 8).

The property, for every request: an answer comes (no hang), it is never a 5xx, a 4xx is an error
body in its route's dialect, a 2xx body parses (and a stream has no in-band error), and both
processes are still up afterwards with the provider still connected. The one 5xx allowed is the
documented 503 when a request asks for providers the network does not have (`hardware` trust, or
sealed to a provider that is not connected). Strategies live in fuzz_strategies.py.

Examples are derandomized so CI sees the same ones every run; DARKBLOOM_FUZZ_EXAMPLES=N runs N
random examples per test instead, for a long local hunt.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.app import create_app
from darkbloom.crypto import SealingError
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e import fuzz_strategies as fs
from tests.e2e.harness import MODEL, Coordinator, Provider

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_S = 30.0
_RANDOM_EXAMPLES = int(os.environ.get("DARKBLOOM_FUZZ_EXAMPLES", "0"))
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


def fuzz(examples: int) -> Callable[[Any], Any]:
    return settings(max_examples=_RANDOM_EXAMPLES or examples, derandomize=not _RANDOM_EXAMPLES,
                    deadline=None, database=None, print_blob=False,
                    suppress_health_check=list(HealthCheck))


@dataclass
class Stack:
    coordinator: Coordinator
    provider: Provider
    target: fs.Target
    http: httpx.Client


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL, not SQLite: it refuses more of what a request can smuggle in (NUL bytes)."""
    name, url = fresh_postgres_database()
    coordinator = Coordinator(tmp_path_factory.mktemp("fuzz"), database_url=url, default_max_tokens=16,
                              admin_key=fs.ADMIN_KEY)
    provider: Provider | None = None
    try:
        provider = Provider(coordinator.start(), slots=2).start()
        key = httpx.get(f"{coordinator.base_url}/v1/encryption-key").json()
        entry = httpx.get(f"{coordinator.base_url}/v1/providers/attestation").json()["providers"][0]
        session = httpx.post(f"{coordinator.base_url}/v1/auth/signup",
                             json={"email": "fuzz@example.com", "password": "fuzz-password-1"}).json()
        target = fs.Target(coordinator.api_key, session["session_token"], session["csrf_token"],
                           key["kid"], key["public_key"], entry["provider_id"],
                           entry["encryption_public_key"])
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            yield Stack(coordinator, provider, target, http)
    finally:
        if provider is not None:
            provider.stop()
        coordinator.stop()
        drop_postgres_database(name)


# --- the property ---------------------------------------------------------------------------


def may_be_unavailable(call: fs.Call) -> bool:
    """Whether the call asks for providers this network lacks, so a 503 is the documented answer."""
    if any(name == "x-min-trust-level" and value == b"hardware" for name, value in call.headers):
        return True
    if call.path in fs.MEDIA_ROUTES:  # no media model is served here
        return True
    body = call.body
    if not isinstance(body, dict) or not isinstance(body.get("sealed"), list):
        return False
    # The coordinator keeps the last entry per provider id, and checks its key against the provider's.
    keys = {e.get("provider_id"): e.get("encryption_public_key") for e in body["sealed"]
            if isinstance(e, dict) and isinstance(e.get("provider_id"), str | fs.Ph)}
    return keys.get(fs.Ph.PROVIDER_ID) is not fs.Ph.PROVIDER_KEY


def _stripe_unconfigured(call: fs.Call, response: httpx.Response) -> bool:
    """The fuzz stack has no Stripe key: its routes' documented answer is 503 billing_error."""
    if response.status_code != 503 or "/stripe" not in call.path:
        return False
    try:
        return bool(response.json()["error"]["type"] == "billing_error")
    except (ValueError, KeyError, TypeError):
        return False


def _error_shape(path: str, body: Any) -> str | None:
    if path in fs.ANTHROPIC_ROUTES:
        error = body.get("error") if isinstance(body, dict) else None
        if set(body or ()) != {"type", "error"} or body["type"] != "error" or not isinstance(error, dict):
            return "not Anthropic's {type: error, error: {...}}"
        if not {"type", "message"} <= set(error) <= {"type", "message", "sealed"} \
                or not all(isinstance(error[k], str) and error[k] for k in ("type", "message")):
            return "Anthropic error without a type and message"
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if set(body or ()) != {"error"} or not isinstance(error, dict):
        return "not OpenAI's {error: {...}}"
    if not _OPENAI_ERROR_KEYS <= set(error) <= _OPENAI_ERROR_KEYS | {"sealed"}:
        return f"OpenAI error with keys {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str) \
            or not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return "OpenAI error fields of the wrong types"
    return None


def _stream_problem(text: str, rendered: fs.Rendered) -> str | None:
    for event in filter(None, text.replace("\r\n", "\n").split("\n\n")):
        lines = event.split("\n")
        if rendered.reply is not None:  # sender-sealed: each event is one sealed `data:` line
            try:
                lines = rendered.reply.open(event.removeprefix("data: ")).decode().split("\n")
            except (SealingError, UnicodeDecodeError) as exc:
                return f"a sealed event did not open: {exc}"
        for line in lines:
            if line.startswith("event: error"):
                return f"in-band error event: {event[:300]}"
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            try:
                data = json.loads(line[len("data: "):])
            except ValueError:
                return f"an event's data is not JSON: {line[:200]}"
            if isinstance(data, dict) and ("error" in data or data.get("type") == "error"):
                return f"in-band error: {line[:300]}"
    return None


def _success_problem(path: str, rendered: fs.Rendered, response: httpx.Response) -> str | None:
    media = response.headers.get("content-type", "").split(";")[0]
    if media == "text/event-stream":
        return _stream_problem(response.text, rendered)
    content = response.content
    if media == fs.SENDER_SEALED:
        if rendered.reply is None:
            return "a sealed reply to a request that was not sealed"
        try:
            content = rendered.reply.open(json.loads(content)["ciphertext"])
        except (ValueError, KeyError, TypeError, SealingError) as exc:
            return f"the sealed reply did not open: {exc!r}"
    try:
        body = json.loads(content)
    except ValueError:
        return f"2xx body is not JSON: {content[:200]!r}"
    if media == fs.PROVIDER_SEALED:
        sealed = isinstance(body, dict) and isinstance(body.get("sealed"), list)
        return None if sealed else "a consumer-blind reply without its sealed chunks"
    key, value = {fs.CHAT: ("object", "chat.completion"), fs.COMPLETIONS: ("object", "text_completion"),
                  fs.RESPONSES: ("object", "response"), fs.MESSAGES: ("type", "message"),
                  fs.COUNT_TOKENS: ("input_tokens", int)}.get(path, ("", None))
    if value is None:
        return None
    got = body.get(key) if isinstance(body, dict) else None
    if not (isinstance(got, value) if isinstance(value, type) else got == value):
        return f"2xx body has no {key} {value}: {content[:200]!r}"
    return None


def judge(call: fs.Call, rendered: fs.Rendered, response: httpx.Response) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    path = response.request.url.path  # decoded, as the coordinator picks the dialect
    if status >= 500 and not (status == 503 and may_be_unavailable(call)) \
            and not _stripe_unconfigured(call, response):
        return f"{status} {response.text[:300]}"
    request_id = response.headers.get("x-request-id", "")
    if not _SANE_ID.fullmatch(request_id) or response.headers.get("request-id") != request_id:
        return f"x-request-id {request_id!r} / request-id {response.headers.get('request-id')!r}"
    sent = [value.decode("latin-1") for name, value in rendered.headers if name == "x-request-id"]
    if len(sent) == 1 and _SANE_ID.fullmatch(sent[0]) and request_id != sent[0]:
        return f"x-request-id {sent[0]!r} was not echoed (got {request_id!r})"
    if call.method == "HEAD" or 300 <= status < 400:
        return None
    if status >= 400:
        try:
            body = json.loads(response.content)
        except ValueError:
            return f"{status} body is not JSON: {response.content[:200]!r}"
        shape = _error_shape(path, body)
        return f"{status} {shape}: {response.content[:300]!r}" if shape else None
    return _success_problem(path, rendered, response)


def exercise(stack: Stack, call: fs.Call) -> None:
    rendered = fs.render(call, stack.target)
    content = rendered.content
    note(f"sent {call.method} {call.path} headers={rendered.headers!r} body={(content or b'')[:2000]!r}")
    send: Any = iter([content]) if call.chunked and content is not None else content
    try:
        response = stack.http.request(call.method, stack.coordinator.base_url + call.path,
                                      headers=rendered.headers, content=send)
    except httpx.TimeoutException:
        pytest.fail(f"{call.method} {call.path}: no answer within {REQUEST_TIMEOUT_S:g} s")
    note(f"answer {response.status_code} {response.content[:500]!r}")
    problem = judge(call, rendered, response)
    assert problem is None, f"{call.method} {call.path}: {problem}"
    assert stack.coordinator.proc is not None and stack.coordinator.proc.poll() is None, "coordinator died"
    assert stack.provider.proc is not None and stack.provider.proc.poll() is None, "provider died"
    assert stack.coordinator.provider_count() == 1, "the provider was disconnected"


# --- the tests ------------------------------------------------------------------------------


def test_the_strategies_cover_every_route() -> None:
    """A route added to the app without a strategy here fails this test."""
    paths = create_app(CoordinatorSettings()).openapi()["paths"]
    served = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    covered = {("GET", p) for p in fs.GET_ROUTES} | {("POST", p) for p in fs.POST_ROUTES} \
        | {("POST", p) for p in fs.MEDIA_ROUTES} | set(fs.ACCOUNT_ROUTES)
    assert served == covered - {("GET", "/openapi.json")}


@fuzz(400)
@given(call=fs.account_calls())
def test_account_routes(stack: Stack, call: fs.Call) -> None:
    """Sessions, keys and money over HTTP: never a 5xx, errors in OpenAI's shape, whatever is sent."""
    exercise(stack, call)


@fuzz(200)
@given(call=fs.media_calls())
def test_media_routes(stack: Stack, call: fs.Call) -> None:
    """Transcription forms and image bodies, however odd: a 4xx naming the problem, or the 503 of
    a network with no media provider; never another 5xx, never a hang."""
    exercise(stack, call)


@fuzz(300)
@given(route=st.sampled_from(fs.POST_ROUTES), body=fs.JSON | fs.HOSTILE)
def test_random_json(stack: Stack, route: str, body: Any) -> None:
    exercise(stack, fs.post(route, body))


@fuzz(600)
@given(data=st.data())
def test_plausible_bodies_with_hostile_fields(stack: Stack, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(fs.POST_ROUTES))
    exercise(stack, fs.post(route, data.draw(fs.bodies(route))))


@fuzz(400)
@given(call=fs.schema_calls())
@example(call=fs.post(fs.RESPONSES, {  # a null bound was compared with an int: TypeError, 500
    "model": MODEL, "input": "x", "max_output_tokens": 2, "tool_choice": {"type": "function", "name": "f"},
    "tools": [{"type": "function", "name": "f", "parameters": {"maxLength": None}}]}))
def test_json_schemas(stack: Stack, call: fs.Call) -> None:
    exercise(stack, call)


@fuzz(300)
@given(call=fs.raw_calls())
def test_raw_bytes(stack: Stack, call: fs.Call) -> None:
    exercise(stack, call)


@fuzz(500)
@given(call=fs.header_calls())
@example(call=fs.Call("POST", fs.COMPLETIONS, (*fs.AUTH, ("content-type", fs.SENDER_SEALED.encode())),
                      fs.Raw('{"kid":' + "[" * 100_000 + "]" * 100_000 + "}")))  # RecursionError, 500
def test_headers_and_sealed_envelopes(stack: Stack, call: fs.Call) -> None:
    exercise(stack, call)


@fuzz(400)
@given(call=fs.route_calls())
@example(call=fs.Call("GET", "/v1/receipts/a%00b", fs.AUTH))  # PostgreSQL refuses NUL in text: 500
def test_paths_methods_and_queries(stack: Stack, call: fs.Call) -> None:
    exercise(stack, call)


def test_still_serving_afterwards(stack: Stack) -> None:
    """After everything above, both processes are up and a plain request still works."""
    assert stack.coordinator.proc is not None and stack.coordinator.proc.poll() is None
    assert stack.provider.proc is not None and stack.provider.proc.poll() is None
    reply = stack.coordinator.client().chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Say hello."}])
    assert reply.choices[0].message.content and reply.usage is not None
    assert httpx.get(f"{stack.coordinator.base_url}/health").json()["status"] == "ok"
