"""Hostile review of the routing lifecycle, records and request validation (issue 8): what a
hostile provider, a careless client or a network attacker could get past them, each case found by
trying it. Every test here failed before its fix."""

from __future__ import annotations

import base64
import json
import os
import time
from types import SimpleNamespace

import pytest
from llama_cpp import llama_grammar
from sqlalchemy.exc import OperationalError

from darkbloom.config import CoordinatorSettings
from darkbloom.coordinator.api.provider_ws import ProviderSession
from darkbloom.coordinator.dispatch import Dispatcher
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.sender_sealing import open_envelope
from darkbloom.coordinator.trust.quarantine import Quarantine
from darkbloom.crypto import KeyPair
from darkbloom.crypto.signing import IdentityKey
from darkbloom.errors import InvalidRequest
from darkbloom.inference.catalog import Catalog
from darkbloom.inference.grammar import ResponseFormat, gbnf
from darkbloom.inference.request import parse_json_body
from darkbloom.protocol import MalformedFrame, decode
from darkbloom.protocol.frames import PROVIDER_FRAME_TYPES, InferenceResponseChunk, provider_frame_adapter
from tests.unit.conftest import MakeProvider


def _refused_unconverted(pattern: str, monkeypatch: pytest.MonkeyPatch) -> InvalidRequest:
    converted: list[str] = []
    monkeypatch.setattr(llama_grammar, "json_schema_to_gbnf", lambda s: converted.append(s) or "")
    with pytest.raises(InvalidRequest) as info:
        gbnf(ResponseFormat("json_schema", json.dumps({"type": "string", "pattern": pattern})))
    assert not converted, "the converter saw it"
    assert (info.value.status_code, info.value.param) == (400, "response_format")
    return info.value


# --- JSON Schema patterns -----------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["^]$", "^a}$", "^a{2}}$", "^(a)]b$", "^[a]]$", "^\\]]$"])
def test_a_stray_closing_bracket_never_reaches_the_converter(
        pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-cpp-python's converter loops forever on a ']' or '}' outside a class or quantifier:
    every such request pinned a worker thread at 100% CPU for good, on the coordinator (and on
    the provider in consumer-blind mode); six of them used up the default executor and every
    later request that parses a body hung."""
    assert "unmatched" in _refused_unconverted(pattern, monkeypatch).message


@pytest.mark.parametrize("pattern", [
    "^[z-a]$", "^\\x00$", "^[\\x00]$", "^[]$", "^a\\u0000b$", "^\\U00110000$", "^\\uD800$",
    "^[^\\x00-\\uFFFF\\U00010000-\\U0010FFFF]$", "^[\\U00110000-\\U00120000]$", "^[\\uD800-\\uDFFF]$",
])
def test_a_pattern_no_token_can_satisfy_is_refused(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp aborts the provider's whole process (GGML_ABORT in llama_grammar_accept_impl)
    when generation reaches a step no token can take; the coordinator passed these, and its
    retries then took down the next providers too."""
    assert "no model can generate" in _refused_unconverted(pattern, monkeypatch).message


@pytest.mark.parametrize("pattern", ["^a\x00$", "^[^\x00]$"])
def test_a_raw_nul_in_a_pattern_is_refused(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NUL cut llama.cpp's C string; its parser then printed the grammar (request content) to
    stderr."""
    assert "NUL" in _refused_unconverted(pattern, monkeypatch).message


@pytest.mark.parametrize("pattern", [
    "^[^\\x00-\\x1F]*$", "^[\\x00-\\x1F]$", "^[a-z-]+$", "^[-a]$", "^(a|b)c\\]d$", "^[^]$",
    "^\\x01\\u00e9\\U0001F600$", "^[\\]a]{2}$", "^a\\}$",
])
def test_patterns_a_model_can_follow_still_convert(pattern: str) -> None:
    assert "root ::=" in gbnf(ResponseFormat("json_schema", json.dumps({"type": "string",
                                                                         "pattern": pattern})))


def test_a_refused_grammar_is_not_printed(capfd: pytest.CaptureFixture[str]) -> None:
    """llama.cpp prints a grammar it cannot parse, in full, with fprintf(stderr) (not through its
    log callback, which grammar.py mutes): request content in the coordinator's log."""
    from darkbloom.inference.grammar import _llama_parses

    assert not _llama_parses('root ::= "a" canary-7f3e')
    assert "canary-7f3e" not in capfd.readouterr().err
    assert _llama_parses('root ::= "a"')


# --- bounded parsing --------------------------------------------------------------------------


def _provider_frame(text: str) -> object:
    return decode(text, provider_frame_adapter, PROVIDER_FRAME_TYPES)


def test_a_provider_frame_of_many_small_values_is_refused_before_parsing() -> None:
    """A 10 MiB `register` listing a million models held the coordinator's event loop for 4 s
    and took 800 MB, before the provider's token was even checked (the first frame is read
    first); 20,000 are already far more than any provider serves."""
    models = ",".join(['{"id":""}'] * 20_000)
    with pytest.raises(MalformedFrame, match="JSON values") as info:
        _provider_frame('{"type":"register","models":[' + models + "]}")
    assert info.value.close_code == 1008
    with pytest.raises(MalformedFrame, match="JSON values"):
        _provider_frame('{"type":"heartbeat","junk":[' + ",".join(["[]"] * 40_000) + "]}")


def test_a_large_honest_frame_still_decodes() -> None:
    ciphertext = base64.b64encode(os.urandom(6 * 1024 * 1024)).decode()
    frame = _provider_frame(json.dumps({"type": "inference_response_chunk", "request_id": "r",
                                        "seq": 0, "encrypted_data": {"ephemeral_public_key": "k",
                                                                     "ciphertext": ciphertext}}))
    assert isinstance(frame, InferenceResponseChunk)


@pytest.mark.parametrize("members", [['""'] * 1_300_000, ["0"] * 2_000_000,
                                     [f'"{i}":0' for i in range(300_000)]])
def test_a_body_of_millions_of_scalars_is_refused_before_parsing(members: list[str]) -> None:
    """json.loads holds the GIL throughout, even in a worker thread: 4 MiB of `"",` stalled the
    coordinator's event loop 180 ms, 3.6 MiB of object members 120 ms; only '[' and '{' were
    counted."""
    brackets = "{}" if ":" in members[0] else "[]"
    body = '{"model":"m","x":' + brackets[0] + ",".join(members) + brackets[1] + "}"
    assert len(body) <= 4 * 1024 * 1024
    with pytest.raises(InvalidRequest, match="values") as info:
        parse_json_body(body.encode())
    assert info.value.code == "invalid_json"


def test_commas_inside_strings_do_not_count() -> None:
    text = "a, " * 300_000
    assert parse_json_body(json.dumps({"model": "m", "prompt": text}).encode())["prompt"] == text


def test_a_sender_sealed_envelope_is_parsed_with_the_same_bounds() -> None:
    """It was json.loads on the event loop: 5 MiB of '[],' held it 370 ms."""
    envelope = '{"kid":"k","ephemeral_public_key":"e","ciphertext":"c","x":[' + \
        ",".join(["[]"] * 1_000_000) + "]}"
    with pytest.raises(InvalidRequest) as info:
        open_envelope(envelope.encode(), KeyPair.generate())
    assert info.value.code == "invalid_sealed_envelope"


# --- routing lifecycle --------------------------------------------------------------------------


class _NoDatabase:
    """A sessionmaker whose database is down: quarantine rows are not written, memory holds."""

    def begin(self) -> None:
        raise OperationalError("insert", {}, Exception("database is down"))


async def test_a_pass_never_routes_a_key_quarantined_while_it_registered(
        make_provider: MakeProvider) -> None:
    """Registration checks the quarantine, then awaits sending `registered`; a quarantine of the
    same key landing in that await marked the key's *listed* sessions untrusted, not this one,
    which then passed its challenge and was routed (and kicked the key's other sessions)."""
    settings = CoordinatorSettings()
    scheduler = Scheduler(10, 1.0, "self_signed", settings.pass_window_s)
    quarantine = Quarantine(_NoDatabase(), 3600)  # type: ignore[arg-type]
    ws = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(quarantine=quarantine)))
    session = ProviderSession(ws, settings, Catalog(), scheduler, Dispatcher(scheduler))  # type: ignore[arg-type]
    late, other = make_provider("late", ("m",)), make_provider("other", ("m",))
    key = IdentityKey.generate().public_b64
    for conn in (late, other):
        conn.identity_key, conn.trust_level, conn.last_pass = key, "self_signed", time.monotonic()
        conn.kick = lambda code, reason, conn=conn: setattr(conn, "closed", True)
    scheduler.add(other)
    quarantine.add(key, None, "posture regression")  # between late's check and its scheduler.add
    scheduler.add(late)
    session._passed(late, True)
    assert late.untrusted and not scheduler.routable(late)
    assert not other.closed  # nor did its pass replace the key's other session
    await quarantine.flush()
