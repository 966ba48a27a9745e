"""The runtime manifest: what a provider's register must report to be routed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from darkbloom.coordinator.trust.manifest import RuntimeManifest
from darkbloom.protocol.frames import Register

A, B, T = "a" * 64, "b" * 64, "c" * 64


def test_an_empty_manifest_checks_nothing() -> None:
    manifest = RuntimeManifest()
    assert not manifest.configured and manifest.public() == {"configured": False}
    assert manifest.mismatches(Register()) == []


def test_each_component_is_checked() -> None:
    manifest = RuntimeManifest(python_hashes=frozenset({A}), runtime_hashes=frozenset({B}),
                               template_hashes={"m": T})
    good = Register(python_hash=A, runtime_hash=B, template_hashes={"m": T, "other": A})
    assert manifest.mismatches(good) == []
    bad = Register(python_hash=B, runtime_hash=None, template_hashes={"m": A})
    assert [(m.component, m.got) for m in manifest.mismatches(bad)] == [
        ("python", B), ("runtime", ""), ("template:m", A)]
    assert manifest.public()["template_hashes"] == {"m": T}


@pytest.mark.parametrize("fields", [{"python_hashes": ["ABC"]}, {"runtime_hashes": ["x" * 64]},
                                    {"template_hashes": {"m": "short"}}, {"unknown": []}])
def test_a_malformed_manifest_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RuntimeManifest.model_validate(fields)
