"""Hypothesis strategies for tests/e2e/test_fuzz_routes.py: requests for every coordinator route.

A strategy yields a ``Call``: method, path, headers and a body plan. Bodies are JSON structures
rendered by ``render`` so they can hold what ``json.dumps`` would never write (``Raw`` literals
such as ``1e999`` or 400-digit integers, ``[`` nested 100 000 deep) and values known only once
the stack is up (``Ph``). Sealing happens at render time with a fresh key, so a replayed example
is never refused as a replay. Token limits stay small (1-8, or far outside the valid range) so
the bodies that turn out valid cost a short generation, not a long one.
"""

from __future__ import annotations

import copy
import enum
import json
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_from_bytes

from hypothesis import strategies as st

from darkbloom.crypto import Channel, KeyPair, b64encode, public_key_from_b64
from tests.e2e.harness import MODEL

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
MESSAGES, COUNT_TOKENS = "/v1/messages", "/v1/messages/count_tokens"
POST_ROUTES = (CHAT, COMPLETIONS, RESPONSES, MESSAGES, COUNT_TOKENS)
# The media routes (issue 13): the fuzz stack serves no media model, so a request that passes
# their checks ends in the documented 503 (no provider).
TRANSCRIPTIONS, IMAGES = "/v1/audio/transcriptions", "/v1/images/generations"
MEDIA_ROUTES = (TRANSCRIPTIONS, IMAGES)
ANTHROPIC_ROUTES = frozenset({MESSAGES, COUNT_TOKENS})
GET_ROUTES = ("/v1/models", "/v1/models/catalog", "/v1/models/{model_id}", "/v1/receipts/{request_id}",
              "/v1/providers/attestation", "/v1/encryption-key", "/v1/runtime/manifest", "/health",
              "/openapi.json",
              # public network data (issue 10, api.md §9)
              "/v1/stats", "/v1/leaderboard", "/v1/network/totals")
# Account routes (issue 9): sessions, keys over HTTP. Method and path, as OpenAPI lists them.
ACCOUNT_ROUTES = (("POST", "/v1/auth/signup"), ("POST", "/v1/auth/login"), ("POST", "/v1/auth/logout"),
                  ("GET", "/v1/me"), ("POST", "/v1/auth/keys"), ("GET", "/v1/auth/keys"),
                  ("DELETE", "/v1/auth/keys"),
                  # money (issue 9): balances, usage, earnings, prices, Stripe, referral, invites, admin
                  ("GET", "/v1/payments/balance"), ("GET", "/v1/payments/usage"),
                  ("GET", "/v1/billing/wallet/balance"), ("GET", "/v1/provider/account-earnings"),
                  ("GET", "/v1/provider/node-earnings"), ("GET", "/v1/pricing"), ("PUT", "/v1/pricing"),
                  ("DELETE", "/v1/pricing"), ("PUT", "/v1/admin/pricing"), ("GET", "/v1/billing/methods"),
                  ("POST", "/v1/billing/stripe/create-session"), ("GET", "/v1/billing/stripe/session"),
                  ("POST", "/v1/billing/stripe/webhook"), ("POST", "/v1/billing/stripe/onboard"),
                  ("GET", "/v1/billing/stripe/status"), ("POST", "/v1/billing/withdraw/stripe"),
                  ("GET", "/v1/billing/stripe/withdrawals"), ("POST", "/v1/billing/stripe/connect/webhook"),
                  ("POST", "/v1/referral/register"), ("POST", "/v1/referral/apply"),
                  ("GET", "/v1/referral/stats"), ("GET", "/v1/referral/info"), ("POST", "/v1/invite/redeem"),
                  ("GET", "/v1/admin/invite-codes"), ("POST", "/v1/admin/invite-codes"),
                  ("DELETE", "/v1/admin/invite-codes"), ("POST", "/v1/admin/credit"),
                  ("POST", "/v1/admin/reward"), ("POST", "/v1/admin/debit"), ("GET", "/v1/admin/actions"),
                  # operations (issue 10)
                  ("GET", "/v1/admin/metrics"),
                  # provider operators (issue 11): device-code login, tokens, machines
                  ("POST", "/v1/device/code"), ("POST", "/v1/device/token"), ("POST", "/v1/device/approve"),
                  ("GET", "/v1/me/provider-tokens"), ("DELETE", "/v1/me/provider-tokens"),
                  ("GET", "/v1/me/summary"), ("GET", "/v1/me/providers"))
# Query strings the GET money routes take, well-formed and not.
ACCOUNT_QUERIES = ("", "?limit=1", "?limit=0", "?limit=99999999999999999999", "?limit=-1", "?limit=abc",
                   "?before=2026-01-01T00:00:00Z", "?before=garbage", "?before=9999-99-99",
                   "?provider_key=x", "?provider_key=" + "A" * 500, "?id=cs_x", "?refresh=1", "?id=%00",
                   "?limit=5&before=2026-11-30T00:00:00%2B00:00")
ADMIN_KEY = "fuzz-admin-key-0123456789"  # the fuzz stack's DARKBLOOM_ADMIN_KEY
SENDER_SEALED = "application/darkbloom-sealed+json"
PROVIDER_SEALED = "application/darkbloom-provider-sealed+json"
AUTH = (("authorization", b"Bearer @KEY@"),)  # @KEY@ becomes the stack's API key when sent


class Ph(enum.Enum):
    """A value known only once the stack is up, or fresh for each request."""

    KID = "kid"
    COORDINATOR_KEY = "coordinator_key"
    PROVIDER_ID = "provider_id"
    PROVIDER_KEY = "provider_key"
    EPHEMERAL = "ephemeral"  # this request's fresh X25519 public key


@dataclass(frozen=True)
class Raw:
    """JSON text written verbatim."""

    text: str

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''} len={len(self.text)})"


class Long(str):
    """A long string that prints short in a falsifying example."""

    def __repr__(self) -> str:
        return f"Long({self[:20]!r}, len={len(self)})"


class LongBytes(bytes):
    def __repr__(self) -> str:
        return f"LongBytes({self[:20]!r}, len={len(self)})"


@dataclass(frozen=True)
class Sealed:
    """base64 ciphertext of ``inner`` (rendered), sealed to the coordinator (trust.md §6) from the
    request's ephemeral key."""

    inner: Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: tuple[tuple[str, bytes], ...] = ()
    body: Any = None  # None (no body), bytes (sent as is) or a JSON structure to render
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length


@dataclass
class Target:
    """What a call needs from the running stack."""

    api_key: str
    session_token: str
    csrf_token: str
    kid: str
    coordinator_key: str
    provider_id: str
    provider_key: str


@dataclass
class Rendered:
    content: bytes | None
    headers: list[tuple[str, bytes]]
    reply: Channel | None  # the sender-sealed request's channel, to open its reply


class _Renderer:
    def __init__(self, target: Target | None) -> None:
        self.target = target
        self.ephemeral = KeyPair.generate()
        self.reply: Channel | None = None

    def value(self, ph: Ph) -> str:
        if ph is Ph.EPHEMERAL:
            return self.ephemeral.public_b64
        assert self.target is not None, "a body with stack values needs a target"
        return str(getattr(self.target, ph.value))

    def render(self, node: Any) -> str:
        if isinstance(node, Raw):
            return node.text
        if isinstance(node, Ph):
            return json.dumps(self.value(node))
        if isinstance(node, Sealed):
            inner = node.inner if isinstance(node.inner, bytes) else self.render(node.inner).encode(
                "utf-8", "surrogatepass")
            self.reply = Channel(self.ephemeral, public_key_from_b64(self.value(Ph.COORDINATOR_KEY)))
            return json.dumps(self.reply.seal(inner)["ciphertext"])
        if isinstance(node, dict):
            return "{" + ",".join(f"{json.dumps(k)}:{self.render(v)}" for k, v in node.items()) + "}"
        if isinstance(node, list | tuple):
            return "[" + ",".join(self.render(v) for v in node) + "]"
        return json.dumps(node)  # ensure_ascii: a lone surrogate goes out as a \udXXX escape


def dumps(body: Any) -> bytes:
    """A body with no stack values (``Ph``, ``Sealed``) as JSON bytes."""
    return _Renderer(None).render(body).encode("utf-8", "surrogatepass")


def render(call: Call, target: Target) -> Rendered:
    renderer = _Renderer(target)
    # An HTTP/1.1 client cannot send a value with outer whitespace; the server never sees one.
    stack_values = {b"@KEY@": target.api_key, b"@SESSION@": target.session_token,
                    b"@CSRF@": target.csrf_token, b"@ADMIN@": ADMIN_KEY}
    headers = []
    for name, value in call.headers:
        for mark, text in stack_values.items():
            value = value.replace(mark, text.encode())
        headers.append((name, value.strip(b" \t")))
    if call.body is None or isinstance(call.body, bytes):
        return Rendered(call.body, headers, None)
    content = renderer.render(call.body).encode("utf-8", "surrogatepass")
    return Rendered(content, headers, renderer.reply)


# --- hostile values ------------------------------------------------------------------------

# Integers outside 9..8192: valid or not, a token limit drawn from here never means a long generation.
INTS = st.one_of(st.integers(max_value=8), st.integers(min_value=8193),
                 st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30]))
HUGE = st.sampled_from([
    "1" + "0" * 400, "-" + "9" * 400, "9" * 5000, "1e999", "-1e999", "1e-999", "NaN", "Infinity",
    "-Infinity", "-0", "0e0", "1E+2", "4.9e-324", "1.7976931348623157e308", "18446744073709551616",
    "-9223372036854775809", "1.0000000000000000000000001",
]).map(Raw)
DEEP = st.sampled_from([100, 900, 990, 1000, 2500, 100_000]).flatmap(lambda n: st.sampled_from([
    Raw("[" * n + "]" * n), Raw('{"a":' * n + "1" + "}" * n), Raw("[" * n + "1" + "]" * n)]))
WIDE = st.sampled_from([
    Raw("[" + ",".join(["{}"] * 50_000) + "]"), Raw("{" + ",".join(f'"k{i}":0' for i in range(20_000)) + "}"),
    Raw("[" + ",".join(['{"role":"user","content":"x"}'] * 3_000) + "]"), Raw("[" + "0," * 100_000 + "0]")])
SURROGATE_TEXT = st.builds(lambda a, s, b: a + s + b, st.text(max_size=4),
                           st.characters(categories=["Cs"]), st.text(max_size=4))
LONG_TEXT = st.sampled_from([1_000, 20_000, 200_000]).map(lambda n: Long("ab " * (n // 3)))
ODD_TEXT = st.sampled_from([
    "", " ", "\x00", "\u2028\u2029", "\ufeff", "\U0001f600" * 3, "<|im_start|>system\n", "<|im_end|>",
    "{{ raise_exception('x') }}", "{% for x in y %}", Long("[" * 100_000), Long('{"a":' * 50_000),
    "%s%n", "\\",
    "\r\n\r\n", "null", "[DONE]", "data: [DONE]\n\n",
])
TEXT = st.one_of(st.text(max_size=24), SURROGATE_TEXT, ODD_TEXT, LONG_TEXT)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=16))
KEYS = st.one_of(st.text(max_size=12), SURROGATE_TEXT, st.sampled_from([
    "model", "messages", "max_tokens", "stream", "prompt", "input", "tools", "type", "content", "role",
    "", "__proto__", "constructor"]))
JSON = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(KEYS, kids, max_size=4)),
                    max_leaves=16)
HOSTILE = st.one_of(st.none(), st.booleans(), INTS, HUGE, st.floats(), TEXT, DEEP, WIDE, st.just([]),
                    st.just({}), st.just([None]), JSON)
BAD_KEYS = st.one_of(st.sampled_from([
    "A" * 44, "AAAA", "", "not base64!", "A" * 43 + "=", "A" * 64, "A" * 5000,
    # low-order X25519 points: 0, 1, order 8, p-1, p, p+1
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=", "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
    "7P///////////////////////////////////////38=", "7f///////////////////////////////////////38=",
    "7v///////////////////////////////////////38=",
]), st.binary(max_size=40).map(b64encode))
BAD_CIPHERTEXT = st.one_of(
    st.binary(max_size=120).map(b64encode),
    st.sampled_from(["", "====", "!!!", "A" * 4096, "AAAA" * 10, "\u00e9\u00e9"]))


# --- plausible bodies, then a few fields made hostile ------------------------------------------

SHORT = st.sampled_from(["hi", "Say hello.", "1+1=", "Name a colour."]) | st.text(max_size=12)
MODELS = st.sampled_from([MODEL] * 6 + ["smollm2", "SMOLLM2-135M", "gpt-4o"])
TOKENS = st.integers(1, 8)
ARGUMENTS = st.one_of(st.sampled_from(["{}", '{"a": 1}', "not json", Long("[" * 100_000),
                                       Long('{"a":' * 100_000), '{"a": "\\ud800"}', "1e999", "[]", "null"]),
                      JSON.map(json.dumps))
STOPS = st.one_of(SHORT, st.lists(SHORT, min_size=1, max_size=4))
SIMPLE_SCHEMAS = st.sampled_from([
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {"type": "object", "properties": {"n": {"type": "integer"}}},
    {"type": "string", "enum": ["x", "y"]}, {}, {"type": "array", "items": {"type": "boolean"}},
])


def _sampling(temperature_max: float, top_k: bool = True) -> dict[str, st.SearchStrategy[Any]]:
    knobs = {"temperature": st.floats(0, temperature_max), "top_p": st.floats(0.01, 1)}
    return {**knobs, "top_k": st.integers(0, 100)} if top_k else knobs


def _chat_body(schemas: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    call = st.builds(lambda i, name, args: {"id": i, "type": "function",
                                            "function": {"name": name, "arguments": args}},
                     SHORT, st.just("f") | SHORT, ARGUMENTS)
    part = st.builds(lambda kind, text: {"type": kind, "text": text},
                     st.sampled_from(["text"] * 5 + ["image_url", "input_audio"]), SHORT)
    message = st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                               "content": SHORT | st.lists(part, min_size=1, max_size=2)},
                              optional={"name": SHORT}),
        st.fixed_dictionaries({"role": st.just("assistant"),
                               "tool_calls": st.lists(call, min_size=1, max_size=2)},
                              optional={"content": SHORT | st.none()}),
        st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": SHORT, "content": SHORT}))
    tool = st.builds(lambda name, params: {"type": "function",
                                           "function": {"name": name, "parameters": params}},
                     st.just("f") | SHORT, schemas)
    response_format = st.one_of(
        st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        st.builds(lambda s, strict: {"type": "json_schema", "json_schema": {"name": "out", "schema": s,
                                                                            "strict": strict}},
                  schemas, st.booleans()))
    return st.fixed_dictionaries(
        {"model": MODELS, "messages": st.lists(message, min_size=1, max_size=3), "max_tokens": TOKENS},
        optional={
            **_sampling(2), "min_p": st.floats(0, 1), "presence_penalty": st.floats(-2, 2),
            "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.1, 2),
            "seed": st.integers(-(2**63), 2**64 - 1), "stop": STOPS, "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "n": st.just(1),
            "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), "max_completion_tokens": TOKENS,
            "response_format": response_format, "tools": st.lists(tool, max_size=2),
            "tool_choice": st.sampled_from(["none", "auto", "required", {"type": "function",
                                                                        "function": {"name": "f"}}]),
            "user": SHORT, "metadata": st.dictionaries(SHORT, SHORT, max_size=2), "logit_bias": st.just({}),
            "modalities": st.just(["text"]), "parallel_tool_calls": st.booleans(),
        })


def _completion_body() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": MODELS, "prompt": SHORT | st.lists(SHORT, min_size=1, max_size=1), "max_tokens": TOKENS},
        optional={**_sampling(2), "stop": STOPS, "stream": st.booleans(), "echo": st.just(False),
                  "suffix": st.just(""), "best_of": st.just(1), "n": st.just(1),
                  "logprobs": st.integers(0, 5), "seed": st.integers(0, 2**32)})


def _responses_body(schemas: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    part = st.builds(lambda kind, text: {"type": kind, "text": text},
                     st.sampled_from(["input_text", "output_text", "text", "input_image"]), SHORT)
    item = st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                               "content": SHORT | st.lists(part, min_size=1, max_size=2)},
                              optional={"type": st.just("message")}),
        st.builds(lambda args, cid: {"type": "function_call", "name": "f", "arguments": args, "call_id": cid},
                  ARGUMENTS, SHORT),
        st.builds(lambda cid, out: {"type": "function_call_output", "call_id": cid, "output": out},
                  SHORT, SHORT),
        st.just({"type": "reasoning"}))
    text_format = st.one_of(
        st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        st.builds(lambda s: {"type": "json_schema", "name": "out", "schema": s}, schemas))
    tool = st.builds(lambda params: {"type": "function", "name": "f", "parameters": params}, schemas)
    return st.fixed_dictionaries(
        {"model": MODELS, "input": SHORT | st.lists(item, min_size=1, max_size=3),
         "max_output_tokens": TOKENS},
        optional={**_sampling(2, top_k=False), "instructions": SHORT, "stream": st.booleans(),
                  "text": st.fixed_dictionaries({}, optional={"format": text_format}),
                  "tools": st.lists(tool, max_size=2),
                  "tool_choice": st.sampled_from(["none", "auto", "required",
                                                  {"type": "function", "name": "f"}]),
                  "store": st.booleans(), "reasoning": st.just({}), "include": st.just([]),
                  "background": st.just(False), "truncation": st.just("disabled"),
                  "metadata": st.dictionaries(SHORT, SHORT, max_size=2)})


def _messages_body(schemas: st.SearchStrategy[Any], count_only: bool) -> st.SearchStrategy[dict[str, Any]]:
    block = st.one_of(
        st.builds(lambda kind, text: {"type": kind, "text": text},
                  st.sampled_from(["text"] * 5 + ["image", "document"]), SHORT),
        st.builds(lambda i, args: {"type": "tool_use", "id": i, "name": "f", "input": args},
                  SHORT, st.dictionaries(SHORT, SHORT, max_size=2)),
        st.builds(lambda i, out: {"type": "tool_result", "tool_use_id": i, "content": out}, SHORT, SHORT),
        st.builds(lambda t: {"type": "thinking", "thinking": t}, SHORT))
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                     "content": SHORT | st.lists(block, min_size=1, max_size=3)})
    tool = st.builds(lambda s: {"name": "f", "input_schema": s}, schemas)
    required = {"model": MODELS, "messages": st.lists(message, min_size=1, max_size=3)}
    optional = {**_sampling(1), "system": SHORT, "stop_sequences": st.lists(SHORT, min_size=1, max_size=4),
                "stream": st.booleans(), "metadata": st.just({}), "thinking": st.just({"type": "disabled"}),
                "tools": st.lists(tool, max_size=2),
                "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                                {"type": "tool", "name": "f"}])}
    (optional if count_only else required)["max_tokens"] = TOKENS
    return st.fixed_dictionaries(required, optional=optional)


def valid_bodies(route: str, schemas: st.SearchStrategy[Any] = SIMPLE_SCHEMAS) -> st.SearchStrategy[Any]:
    """Bodies for ``route`` that are mostly valid: short generations when they are."""
    if route == CHAT:
        return _chat_body(schemas)
    if route == COMPLETIONS:
        return _completion_body()
    if route == RESPONSES:
        return _responses_body(schemas)
    return _messages_body(schemas, count_only=route == COUNT_TOKENS)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a body, the root's new-key slot included."""
    found: list[tuple[Any, Any]] = [(node, None)] if isinstance(node, dict | list) else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((node, key))
        found.extend(_slots(child))
    return found


@st.composite
def _mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any],
             hostile: st.SearchStrategy[Any] = HOSTILE) -> Any:
    """A valid body with 0-3 of its values replaced, removed, or added, each by a hostile value."""
    body = copy.deepcopy(draw(valid))  # copies: st.just() values are shared between examples
    for _ in range(draw(st.integers(0, 3))):
        container, key = draw(st.sampled_from(_slots(body)))
        if key is None:  # a new key or item
            if isinstance(container, dict):
                container[draw(KEYS)] = copy.deepcopy(draw(hostile))
            else:
                container.append(copy.deepcopy(draw(hostile)))
        elif draw(st.integers(0, 4)) == 0:
            del container[key]
        else:
            container[key] = copy.deepcopy(draw(hostile))
    return body


def bodies(route: str, schemas: st.SearchStrategy[Any] = SIMPLE_SCHEMAS) -> st.SearchStrategy[Any]:
    """Structurally plausible bodies for ``route`` with a few values replaced by hostile ones."""
    return _mutated(valid_bodies(route, schemas))


# --- JSON schemas with random keywords ------------------------------------------------------

TYPES = st.sampled_from(["object", "string", "integer", "number", "boolean", "array", "null", "any", ""])
NAMES = st.sampled_from(["a", "b", "x y", "", "$ref", "\u00e9"]) | st.text(max_size=6)
PATTERNS = st.sampled_from([
    "^[a-z]+$", "^{3}$", "(", "[", ")", "a{1000000}", "a{2,1}", "(a|b)*c", "\\", "^\\d{3}-\\d{4}$", ".*",
    "(?P<x>a)", "\\p{L}", "[z-a]", "a**", "(?=a)", "\\1", "[^]", "x{,5}", "^$", "a{0,99999999999}",
]) | st.text(max_size=8)
BOUNDS = st.one_of(st.integers(0, 5), st.sampled_from([-1, 10**9, 10**18, 2**63, 10**30, 1.5, True, None]))
# Wrong-typed keyword values; nothing that fails the JSON body as a whole (deep nesting, surrogates).
SCHEMA_HOSTILE = st.one_of(st.none(), st.booleans(), INTS, HUGE, st.floats(), st.text(max_size=16),
                           st.just([]), st.just({}), st.just([1]), st.just(["a"]), JSON)
NUMBERS = st.one_of(st.integers(-10, 10), st.floats(allow_nan=False, allow_infinity=False, width=32), HUGE)


def _keywords(child: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "type": TYPES | st.lists(TYPES, max_size=3), "properties": st.dictionaries(NAMES, child, max_size=3),
        "patternProperties": st.dictionaries(PATTERNS, child, max_size=2),
        "required": st.lists(NAMES, max_size=3), "items": child | st.booleans(),
        "prefixItems": st.lists(child, max_size=3), "additionalProperties": child | st.booleans(),
        "enum": st.lists(SCALARS, max_size=4), "const": SCALARS, "anyOf": st.lists(child, max_size=3),
        "oneOf": st.lists(child, max_size=3), "allOf": st.lists(child, max_size=3), "not": child,
        "$ref": st.sampled_from(["#", "#/$defs/a", "#/definitions/a", "#/properties/a", "#/$defs/missing",
                                 "http://example.invalid/s", "#/$defs/a/items", ""]) | st.text(max_size=8),
        "$defs": st.dictionaries(st.just("a") | NAMES, child, max_size=2),
        "definitions": st.dictionaries(st.just("a") | NAMES, child, max_size=2), "pattern": PATTERNS,
        "format": st.sampled_from(["date", "date-time", "time", "uuid", "email", "uri", "ipv4", "hostname",
                                   "nonsense"]),
        "minLength": BOUNDS, "maxLength": BOUNDS, "minItems": BOUNDS, "maxItems": BOUNDS,
        "minProperties": BOUNDS, "maxProperties": BOUNDS, "minimum": NUMBERS, "maximum": NUMBERS,
        "exclusiveMinimum": NUMBERS, "exclusiveMaximum": NUMBERS, "multipleOf": NUMBERS,
        "uniqueItems": st.booleans(), "description": SHORT, "title": SHORT, "default": JSON,
        "contains": child, "if": child, "then": child, "else": child, "nullable": st.booleans(),
    }


def _extend(child: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    values = _keywords(child)
    entry = st.sampled_from(sorted(values)).flatmap(
        lambda k: st.tuples(st.just(k), st.one_of(values[k], values[k], values[k], SCHEMA_HOSTILE)))
    return st.lists(entry, min_size=1, max_size=4).map(dict)


SCHEMAS = st.recursive(st.one_of(st.just({}), st.fixed_dictionaries({"type": TYPES}), SIMPLE_SCHEMAS),
                       _extend, max_leaves=8)


def schema_calls() -> st.SearchStrategy[Call]:
    """A valid request whose only variable part is a JSON schema, in every place one can go."""
    ask = [{"role": "user", "content": "Give an example."}]
    tokens, stream = TOKENS, st.booleans()

    def tools(shape: Any) -> st.SearchStrategy[list[Any]]:
        return st.lists(st.builds(shape, SCHEMAS), min_size=1, max_size=2)

    chat_format = st.builds(lambda s, strict: {"type": "json_schema", "json_schema": {
        "name": "out", "schema": s, "strict": strict}}, SCHEMAS, st.booleans())
    chat = st.one_of(
        st.builds(lambda f, n, s: {"model": MODEL, "messages": ask, "max_tokens": n, "stream": s,
                                   "response_format": f}, chat_format, tokens, stream),
        st.builds(lambda t, c, n, s: {"model": MODEL, "messages": ask, "max_tokens": n, "stream": s,
                                      "tools": t, "tool_choice": c},
                  tools(lambda s: {"type": "function", "function": {"name": "f", "parameters": s}}),
                  st.sampled_from(["required", "auto", {"type": "function", "function": {"name": "f"}}]),
                  tokens, stream))
    messages_tools = tools(lambda s: {"name": "f", "input_schema": s})
    messages = st.builds(
        lambda t, c, n, s: {"model": MODEL, "messages": ask, "max_tokens": n, "stream": s, "tools": t,
                            "tool_choice": c}, messages_tools,
        st.sampled_from([{"type": "any"}, {"type": "auto"}, {"type": "tool", "name": "f"}]), tokens, stream)
    count = st.builds(lambda t: {"model": MODEL, "messages": ask, "tools": t}, messages_tools)
    responses = st.one_of(
        st.builds(lambda f, n, s: {"model": MODEL, "input": "Give an example.", "max_output_tokens": n,
                                   "stream": s, "text": {"format": {"type": "json_schema", "name": "out",
                                                                    "schema": f}}}, SCHEMAS, tokens, stream),
        st.builds(lambda t, c, n, s: {"model": MODEL, "input": "Give an example.", "max_output_tokens": n,
                                      "stream": s, "tools": t, "tool_choice": c},
                  tools(lambda s: {"type": "function", "name": "f", "parameters": s}),
                  st.sampled_from(["required", {"type": "function", "name": "f"}]), tokens, stream))
    return st.one_of(chat.map(lambda b: post(CHAT, b)), messages.map(lambda b: post(MESSAGES, b)),
                     count.map(lambda b: post(COUNT_TOKENS, b)), responses.map(lambda b: post(RESPONSES, b)))


def post(route: str, body: Any, headers: tuple[tuple[str, bytes], ...] = (), chunked: bool = False) -> Call:
    return Call("POST", route, (*AUTH, ("content-type", b"application/json"), *headers), body, chunked)


# --- raw bytes, headers, sealed envelopes -----------------------------------------------------

CONTENT_TYPES = st.sampled_from([
    b"application/json", b"application/json; charset=utf-8", b"APPLICATION/JSON", b"text/plain", b"",
    b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
    b"application/json; charset=utf-16",
    SENDER_SEALED.encode(), PROVIDER_SEALED.encode(), b"application/eigeninference-sealed+json",
    SENDER_SEALED.encode() + b"; charset=utf-8", b" " + PROVIDER_SEALED.upper().encode(), b"*/*",
])
# What an HTTP/1.1 client may put in a header value: visible ASCII, obs-text, inner spaces.
HEADER_BYTES = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c >= 0x80 or c == 0x09).strip(b" \t"))
HEADER_VALUES = st.one_of(HEADER_BYTES, st.sampled_from([b"a" * 64, b"a" * 65, b"a" * 4000, b"\xff\xfe"]))


def raw_bodies(route: str) -> st.SearchStrategy[bytes]:
    valid = bodies(route).map(dumps)
    return st.one_of(
        st.binary(max_size=300), st.sampled_from([
            b"", b"{", b"}", b"[", b"null", b"0", b"true", b'"x"', b"{}", b"[]", b"\x00" * 64, b"\xff\xfe{}",
            b"\xef\xbb\xbf{}", b'{"model": "\xff\xfe"}', b'{"a":1,"a":2}', b"{'model': 'x'}", b"model=x",
            b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "\xc3\x28"}]}',
            LongBytes(b"a" * (5 << 20)),
        ]),
        st.tuples(valid, st.integers(0, 400)).map(lambda t: t[0][: t[1]]),  # a valid body cut short
        st.tuples(valid, st.binary(min_size=1, max_size=4)).map(lambda t: t[0][:-1] + t[1]),
        valid.map(lambda b: b.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")),
        st.builds(lambda head, tail: b'{"model":"' + MODEL.encode() + b'","' + head + b'":' + tail + b"}",
                  st.binary(max_size=8), st.binary(max_size=16)),
    )


def raw_calls() -> st.SearchStrategy[Call]:
    return st.sampled_from(POST_ROUTES).flatmap(lambda route: st.builds(
        lambda body, ctype, chunked: Call("POST", route, (*AUTH, ("content-type", ctype)), body, chunked),
        raw_bodies(route), CONTENT_TYPES, st.booleans()))


ENVELOPE_HOSTILE = st.one_of(BAD_KEYS, BAD_CIPHERTEXT, HOSTILE, st.just("0" * 16), st.just(Ph.PROVIDER_ID))


def _sender_envelope(route: str) -> st.SearchStrategy[Any]:
    """Sealed to the coordinator (trust.md §6): a body that opens, or one with a value broken."""
    inner = st.one_of(valid_bodies(route), valid_bodies(route), bodies(route), JSON, raw_bodies(route))
    envelope = st.builds(lambda body: {"kid": Ph.KID, "ephemeral_public_key": Ph.EPHEMERAL,
                                       "ciphertext": Sealed(body)}, inner)
    return st.one_of(envelope, _mutated(envelope, ENVELOPE_HOSTILE), JSON)


def _blind_envelope(route: str) -> st.SearchStrategy[Any]:
    """Sealed to providers (trust.md §9) in the clear fields; the ciphertexts never open."""
    entry = st.builds(lambda pid, key, ciphertext: {"provider_id": pid, "encryption_public_key": key,
                                                    "ephemeral_public_key": Ph.EPHEMERAL,
                                                    "ciphertext": ciphertext},
                      st.sampled_from([Ph.PROVIDER_ID] * 3 + ["p-unknown"]),
                      st.sampled_from([Ph.PROVIDER_KEY] * 3 + [Ph.COORDINATOR_KEY]), BAD_CIPHERTEXT)
    envelope = st.fixed_dictionaries(
        {"model": st.just(MODEL), "sealed": st.lists(entry, min_size=1, max_size=3)},
        optional={"v": st.just(2), "stream": st.booleans(), "max_tokens": TOKENS})
    return st.one_of(envelope, _mutated(envelope, ENVELOPE_HOSTILE))


TRUST_LEVELS = st.sampled_from([b"none", b"self_signed", b"hardware", b"HARDWARE", b"", b"self-signed",
                                b"none,hardware"]) | HEADER_VALUES
AUTH_HEADERS = st.one_of(
    st.just(AUTH), st.just(AUTH), st.just((("x-api-key", b"@KEY@"),)),
    st.tuples(st.tuples(st.sampled_from(["authorization", "x-api-key"]), st.one_of(
        HEADER_VALUES, st.sampled_from([b"Bearer", b"Bearer ", b"bearer @KEY@", b"Bearer  @KEY@",
                                        b"Basic @KEY@", b"Bearer sk-db-wrong", b"Bearer @KEY@x",
                                        b"Bearer @KEY@\xff", b"Bearer " + b"k" * 6000]),
        HEADER_VALUES.map(lambda v: b"Bearer " + v)))),
    st.just(()), st.just((("authorization", b"Bearer @KEY@"), ("authorization", b"Bearer wrong"))))
EXTRA_HEADERS = st.lists(st.one_of(
    st.tuples(st.just("x-min-trust-level"), TRUST_LEVELS),
    st.tuples(st.just("x-request-id"),
              HEADER_VALUES | st.sampled_from([b"ok-id", b"a" * 64, b"a b", b"../x"])),
    st.tuples(st.sampled_from(["anthropic-version", "anthropic-beta"]),
              HEADER_VALUES | st.sampled_from([b"2023-06-01", b"tools-2024-04-04"])),
    st.tuples(st.sampled_from(["accept", "accept-encoding", "content-encoding", "expect",
                               "openai-organization"]),
              HEADER_VALUES | st.sampled_from([b"gzip", b"text/event-stream", b"100-continue", b"br"])),
    st.tuples(st.sampled_from(["content-type"]), CONTENT_TYPES),
    st.tuples(st.text(string.ascii_lowercase + "-", min_size=1, max_size=20), HEADER_VALUES),
), max_size=4)


def header_calls() -> st.SearchStrategy[Call]:
    """Odd headers on bodies that are otherwise mostly valid, sealed or not."""
    def build(route: str) -> st.SearchStrategy[Call]:
        plain = st.tuples(st.just(b"application/json"), bodies(route))
        sender = st.tuples(st.sampled_from([SENDER_SEALED.encode(), b"application/eigeninference-sealed+json",
                                            SENDER_SEALED.upper().encode() + b"; x=y"]),
                           _sender_envelope(route))
        blind = st.tuples(st.just(PROVIDER_SEALED.encode()), _blind_envelope(route))
        return st.builds(
            lambda typed, auth, extra, chunked: Call(
                "POST", route, (*auth, ("content-type", typed[0]), *extra), typed[1], chunked),
            st.one_of(plain, sender, sender, blind, blind), AUTH_HEADERS, EXTRA_HEADERS, st.booleans())
    return st.sampled_from(POST_ROUTES).flatmap(build)


# --- paths and methods ------------------------------------------------------------------------

SEGMENTS = st.one_of(
    st.text(max_size=12).map(lambda s: quote(s, safe="", errors="surrogatepass")),
    st.binary(max_size=12).map(lambda b: quote_from_bytes(b, safe="")),
    st.sampled_from(["..", ".", "%00", "%ff", "%zz", "%", MODEL, "smollm2", "catalog", Long("a" * 3000),
                     "%2F", "models", "v1", "%C0%AF", "..%2f..%2f", "%E2%80%AE"]))
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


# Path parameters go to the catalog and the database: control bytes, overlong and non-UTF-8 values.
PARAMS = st.one_of(SEGMENTS, st.sampled_from(["%00", "a%00b", "%ff%fe", "%ED%A0%80", "%0A%0D", "x" * 300]))


def _path(template: str, segment: str) -> str:
    return template.replace("{model_id}", segment).replace("{request_id}", segment)


def route_calls() -> st.SearchStrategy[Call]:
    """Every GET route with random path parameters and queries; unknown paths and wrong methods."""
    known = st.builds(_path, st.sampled_from(GET_ROUTES), PARAMS)
    queries = st.one_of(st.just(""), st.just(""), SEGMENTS.map(lambda s: "?type=" + s),
                        st.lists(st.tuples(SEGMENTS, SEGMENTS), max_size=3).map(
                            lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)))
    gets = st.builds(lambda method, path, query, auth, extra: Call(method, path + query, (*auth, *extra)),
                     st.sampled_from(["GET"] * 4 + ["HEAD"]), known, queries, AUTH_HEADERS, EXTRA_HEADERS)
    anywhere = st.builds(_path, st.sampled_from(GET_ROUTES + POST_ROUTES + ("/ws/provider",)), SEGMENTS)
    paths = st.one_of(
        anywhere, st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
        st.builds(lambda p, s: p + "/" + s, anywhere, SEGMENTS), anywhere.map(lambda p: p + "/"),
        st.sampled_from(["/", "//v1/models", "/v1", "/v1/", "/V1/MODELS", "/v1/models/", "/v1/receipts/",
                         "/v1/models/" + MODEL + "/extra"]))
    content = st.one_of(st.none(), JSON, st.binary(max_size=40))
    others = st.builds(lambda method, path, query, auth, body: Call(method, path + query, auth, body),
                       METHODS, paths, queries, AUTH_HEADERS, content)
    return st.one_of(gets, others)


# --- account routes -----------------------------------------------------------------------------

ACCOUNT_AUTH = st.sampled_from([
    (), AUTH, (("authorization", b"Bearer @SESSION@"),), (("x-api-key", b"@KEY@"),),
    (("cookie", b"darkbloom_session=@SESSION@"),),
    (("cookie", b"darkbloom_session=@SESSION@"), ("x-csrf-token", b"@CSRF@")),
    (("cookie", b"darkbloom_session=@SESSION@"), ("x-csrf-token", b"wrong")),
    (("authorization", b"Bearer dbs-" + b"0" * 64),), (("cookie", b"darkbloom_session=garbage"),),
    (("authorization", b"Bearer @ADMIN@"),),
    (("authorization", b"Bearer @ADMIN@"), ("idempotency-key", b"k1")),
    (("stripe-signature", b"t=1,v1=00"),), (("authorization", b"Bearer darkbloom-pt-" + b"0" * 64),),
])
_ACCOUNT_FIELD = st.one_of(HOSTILE, st.emails().map(str.upper), st.text(min_size=10, max_size=40),
                           st.just("sk-db-" + "0" * 64), st.just("0" * 64), st.just("abcd-efgh"))
ACCOUNT_BODY = st.one_of(
    JSON, HOSTILE,
    st.dictionaries(st.sampled_from(["email", "password", "label", "key", "id", "extra", "amount_usd",
                                     "code", "model", "input_price", "output_price", "method", "note",
                                     "max_uses", "expires_at", "return_url", "referral_code", "type",
                                     "device_code", "user_code"]),
                    st.one_of(_ACCOUNT_FIELD, st.integers(), st.floats(allow_nan=True), st.booleans(),
                              st.sampled_from(["5.00", "0.0005", "1e3", "-1", "10000.01", "std", MODEL])),
                    max_size=4),
)


def account_calls() -> st.SearchStrategy[Call]:
    """Every account route with each way of presenting (or not) a session, and hostile bodies."""
    def build(route: tuple[str, str], auth: tuple[tuple[str, bytes], ...], body: Any, query: str) -> Call:
        method, path = route
        if method == "GET":
            return Call(method, path + query, auth)
        return Call(method, path, (*auth, ("content-type", b"application/json")), body)
    return st.builds(build, st.sampled_from(ACCOUNT_ROUTES), ACCOUNT_AUTH, ACCOUNT_BODY,
                     st.sampled_from(ACCOUNT_QUERIES))


# --- the media routes (issue 13) ----------------------------------------------------------------

MEDIA_MODELS = st.sampled_from([MODEL, "whisper-tiny-en", "whisper-1", "tiny-sd", "", 5, None])
_TINY_WAV = (b"RIFF\x2c\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00"
             b"\x00\x7d\x00\x00\x02\x00\x10\x00data\x08\x00\x00\x00" + b"\x00\x01" * 4)


def _image_body() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({"model": MEDIA_MODELS, "prompt": st.text(max_size=20)}, optional={
        "n": st.integers(-1, 6), "steps": st.integers(-1, 200), "seed": st.integers(-1, 2**64),
        "size": st.sampled_from(["64x64", "1024x1024", "auto", "0x0", "4096x4096", "64x", "x",
                                 "1e3x64", " 64x64", "64X64"]),
        "negative_prompt": st.text(max_size=10) | st.integers(),
        "response_format": st.sampled_from(["b64_json", "url", "", None]),
        "output_format": st.sampled_from(["png", "jpeg", None])})


def _part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"--fuzzboundary\r\n" + disposition + b"\r\n\r\n" + value + b"\r\n"


def _form(fields: list[tuple[bytes, bytes]], file: tuple[bytes, bytes] | None, cut: int) -> bytes:
    body = b"".join(_part(name, value) for name, value in fields)
    if file is not None:
        body += _part(b"file", file[1], file[0])
    body += b"--fuzzboundary--\r\n"
    return body[:cut] if cut else body


FORM_FIELDS = st.tuples(
    st.sampled_from([b"model", b"language", b"prompt", b"response_format", b"temperature",
                     b"timestamp_granularities[]", b"stream", b"file", b"junk", b"model\x00",
                     b'mo"del']),
    st.sampled_from([b"whisper-tiny-en", b"whisper-1", MODEL.encode(), b"en", b"fr", b"verbose_json",
                     b"srt", b"word", b"segment", b"0.5", b"nan", b"-1", b"true", b"", b"\xff\xfe",
                     b"x" * 70_000]))
UPLOADS = st.tuples(
    st.sampled_from([b"a.wav", b"a.mp3", b"a.webm", b"noext", b"a.aiff", b"../../a.wav", b"a\x00.wav",
                     b"", "\u00e9.ogg".encode()]),
    st.one_of(st.binary(max_size=600), st.just(_TINY_WAV), st.just(b""),
              st.binary(max_size=64).map(lambda tail: _TINY_WAV[:44] + tail)))


def media_calls() -> st.SearchStrategy[Call]:
    """JSON (random, hostile or image-shaped) to both media routes, and multipart forms (odd
    fields, odd files, cut short, a wrong boundary) to the transcription route."""
    json_calls = st.builds(post, st.sampled_from(MEDIA_ROUTES), JSON | HOSTILE | _image_body())
    forms = st.builds(
        lambda fields, file, cut, ctype: Call("POST", TRANSCRIPTIONS, (*AUTH, ("content-type", ctype)),
                                              _form(fields, file, cut)),
        st.lists(FORM_FIELDS, max_size=5), st.none() | UPLOADS, st.sampled_from([0, 0, 0, 10, 120]),
        st.sampled_from([b"multipart/form-data; boundary=fuzzboundary",
                         b"multipart/form-data; boundary=other", b"multipart/form-data",
                         b"application/json"]))
    return st.one_of(json_calls, forms)
