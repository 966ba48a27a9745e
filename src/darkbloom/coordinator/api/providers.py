"""Public trust routes: the provider attestation listing and the coordinator's sealing key.

GET /v1/providers/attestation is public, so consumers can check providers for themselves.

Each entry carries the exact signed attestation bytes and signature (trust.md §9), so a consumer
verifies the blob locally instead of trusting this listing's summary fields.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from darkbloom.coordinator.routing.registry import ProviderConn

router = APIRouter()


def _entry(p: ProviderConn, routable: bool, reputation: dict[str, object]) -> dict[str, Any]:
    return {
        "provider_id": p.id,
        "chip_name": p.hardware.chip_name,
        "hardware_model": p.hardware.machine_model,
        "serial_number": p.serial,
        "trust_level": p.trust_level,
        "runtime_mismatch": p.runtime_mismatch,
        "status": "untrusted" if p.untrusted else "unroutable" if not routable
        else "serving" if p.in_flight else "online",
        "routable": routable,  # the scheduler's own predicate: only these are ever routed
        "challenge_strikes": p.strikes,
        "memory_gb": p.hardware.memory_gb,
        "gpu_cores": p.hardware.gpu_cores,
        "models": sorted(p.models),
        "backend": p.backend,
        "secure_enclave": False,
        "se_public_key": p.identity_key,
        "identity_public_key": p.identity_key,
        "encryption_public_key": p.public_key_b64,
        "attestation_raw": p.attestation_raw,
        "attestation_signature": p.attestation_signature,
        "certificate_chain": p.certificate_chain or [],
        "decode_tps": round(p.decode_tps, 2),
        "reputation": reputation,
    }


@router.get("/v1/providers/attestation")
async def attestation_listing(request: Request) -> dict[str, Any]:
    scheduler = request.app.state.scheduler
    return {
        "providers": [_entry(p, scheduler.routable(p), scheduler.reputations.of(p).summary())
                      for p in scheduler.providers.values()],
        "verification_instructions": (
            "base64-decode attestation_raw; verify attestation_signature over those bytes with the "
            "P-256 key in their publicKey field (ECDSA/SHA-256, DER); check that publicKey equals "
            "identity_public_key and encryptionPublicKey equals encryption_public_key."),
    }


@router.get("/v1/runtime/manifest")
async def runtime_manifest(request: Request) -> dict[str, Any]:
    """api.md §10: the runtime hashes a provider must run to be routed (trust.md)."""
    return dict(request.app.state.settings.runtime_manifest.public())


@router.get("/v1/encryption-key")
async def encryption_key(request: Request) -> JSONResponse:
    """The coordinator's X25519 key for sender-side sealing (trust.md §6)."""
    keys = request.app.state.sender_keys
    return JSONResponse({"kid": request.app.state.sender_kid, "public_key": keys.public_b64,
                         "algorithm": "x25519-nacl-box"},
                        headers={"Cache-Control": "public, max-age=300"})
