"""The runtime gate (protocol.md §3, §7; trust.md): with a runtime manifest configured, a real
provider whose Python runtime, inference runtime or chat template is not on it stays connected
but is never routed, and is told why (`runtime_status`); one that matches is routed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.provider.fingerprint import fingerprint, template_hash
from tests.e2e.harness import MODEL, Coordinator, Provider

BOGUS = "0" * 64


def _manifest(**fields: object) -> str:
    return json.dumps(fields)


def _template_hash() -> str:
    path = DEFAULT_MODEL.weights_path()
    assert path is not None
    return template_hash(PromptBuilder.vocab_only(path).template_source)


def test_the_manifest_is_public(tmp_path: Path) -> None:
    plain = Coordinator(tmp_path / "plain").start()
    try:
        assert httpx.get(f"{plain.base_url}/v1/runtime/manifest").json() == {"configured": False}
    finally:
        plain.stop()
    coordinator = Coordinator(tmp_path / "gated",
                              runtime_manifest=_manifest(python_hashes=[BOGUS])).start()
    try:
        body = httpx.get(f"{coordinator.base_url}/v1/runtime/manifest").json()
        assert body == {"configured": True, "python_hashes": {BOGUS: True}, "runtime_hashes": {},
                        "template_hashes": {}}
    finally:
        coordinator.stop()


def test_a_provider_off_the_manifest_is_connected_but_never_routed(tmp_path: Path) -> None:
    mine = fingerprint()
    assert mine.runtime_hash is not None
    coordinator = Coordinator(tmp_path, runtime_manifest=_manifest(
        python_hashes=[mine.python_hash], runtime_hashes=[BOGUS])).start()
    provider = Provider(coordinator).start(wait=False)
    try:
        listing: list[dict[str, object]] = []
        for _ in range(300):
            listing = httpx.get(f"{coordinator.base_url}/v1/providers/attestation").json()["providers"]
            if listing:
                break
            time.sleep(0.1)
        assert listing and listing[0]["routable"] is False
        assert coordinator.provider_count() == 0
        log = provider.log_text()
        assert "runtime" in log and "not on the coordinator's runtime manifest" in log
    finally:
        provider.stop()
        coordinator.stop()


def test_a_provider_on_the_manifest_is_routed(tmp_path: Path) -> None:
    mine = fingerprint()
    assert mine.runtime_hash is not None
    coordinator = Coordinator(tmp_path, runtime_manifest=_manifest(
        python_hashes=[mine.python_hash], runtime_hashes=[mine.runtime_hash],
        template_hashes={MODEL: _template_hash()})).start()
    provider = Provider(coordinator).start()
    try:
        reply = coordinator.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.choices[0].message.content is not None
    finally:
        provider.stop()
        coordinator.stop()
