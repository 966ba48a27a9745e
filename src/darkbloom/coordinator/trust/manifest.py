"""The runtime manifest (api.md §10 `GET /v1/runtime/manifest`, trust.md): the known-good hashes of
the Python runtime, the inference runtime and the chat templates a provider may run. A provider
whose `register` does not match is told so (`runtime_status`) and is never routed, though it stays
connected: a mismatch is a wrong build, not a proven lie, so it is no strike and no quarantine."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkbloom.protocol.frames import Register, RuntimeMismatch

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RuntimeManifest(BaseModel):
    """DARKBLOOM_RUNTIME_MANIFEST, e.g. ``{"python_hashes": ["<sha256>"], "runtime_hashes": [...],
    "template_hashes": {"smollm2-135m": "<sha256>"}}``; an empty list or map checks nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    python_hashes: frozenset[str] = Field(default=frozenset(), max_length=256)
    runtime_hashes: frozenset[str] = Field(default=frozenset(), max_length=256)
    template_hashes: dict[str, str] = Field(default_factory=dict, max_length=256)

    @field_validator("python_hashes", "runtime_hashes")
    @classmethod
    def _hashes(cls, value: frozenset[str]) -> frozenset[str]:
        if any(not _SHA256.fullmatch(h) for h in value):
            raise ValueError("hashes are lowercase hex SHA-256")
        return value

    @field_validator("template_hashes")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not _SHA256.fullmatch(h) or not 0 < len(name) <= 256 for name, h in value.items()):
            raise ValueError("template_hashes maps a template name to a lowercase hex SHA-256")
        return value

    @property
    def configured(self) -> bool:
        return bool(self.python_hashes or self.runtime_hashes or self.template_hashes)

    def public(self) -> dict[str, Any]:
        """api.md §10's shape."""
        if not self.configured:
            return {"configured": False}
        return {"configured": True, "python_hashes": dict.fromkeys(sorted(self.python_hashes), True),
                "runtime_hashes": dict.fromkeys(sorted(self.runtime_hashes), True),
                "template_hashes": dict(sorted(self.template_hashes.items()))}

    def mismatches(self, register: Register) -> list[RuntimeMismatch]:
        """What in the provider's report is not on the manifest (nothing when it all is)."""
        found: list[RuntimeMismatch] = []
        if self.python_hashes and register.python_hash not in self.python_hashes:
            found.append(_mismatch("python", "one of the manifest's", register.python_hash))
        if self.runtime_hashes and register.runtime_hash not in self.runtime_hashes:
            found.append(_mismatch("runtime", "one of the manifest's", register.runtime_hash))
        reported = register.template_hashes or {}
        for name, want in self.template_hashes.items():
            if reported.get(name) != want:
                found.append(_mismatch(f"template:{name}", want, reported.get(name)))
        return found


def _mismatch(component: str, expected: str, got: str | None) -> RuntimeMismatch:
    return RuntimeMismatch(component=component[:300], expected=expected[:128],
                           got=(got or "")[:128])
