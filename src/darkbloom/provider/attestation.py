"""The provider's signed attestation blob (trust.md §2, §9): who it is, which X25519 key it
vouches for, and its self-reported posture, signed by its persistent P-256 identity key.

The exact JSON bytes travel base64-encoded next to the signature, so the coordinator verifies
the very bytes that were signed and never a re-serialisation. The signature covers the
attestation context string followed by those bytes (``protocol.trust.attestation_message``).
"""

from __future__ import annotations

import base64
import platform
import resource
from pathlib import Path
from typing import Any

from darkbloom import __version__
from darkbloom.crypto.challenge import now_stamp
from darkbloom.crypto.signing import IdentityKey, canonical_json
from darkbloom.protocol.frames import Hardware
from darkbloom.protocol.trust import attestation_message


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def posture() -> dict[str, Any]:
    """Linux posture fields (advisory under a software key, trust.md §9)."""
    ptrace = _read("/proc/sys/kernel/yama/ptrace_scope")
    lockdown = _read("/sys/kernel/security/lockdown") or ""
    active = lockdown[lockdown.find("[") + 1:lockdown.find("]")] if "[" in lockdown else "none"
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    return {
        "platform": "linux" if platform.system() == "Linux" else platform.system().lower(),
        "ptraceScope": int(ptrace) if ptrace and ptrace.isdigit() else -1,
        "kernelLockdown": active,
        "coreDumpsDisabled": soft == 0 and hard == 0,
        "secureBootEnabled": False,  # not readable without privileges; reported, never assumed
    }


def build(identity: IdentityKey, encryption_key_b64: str, hardware: Hardware, engine: str
          ) -> dict[str, Any]:
    inner = {
        "v": 2,
        "publicKey": identity.public_b64,
        "encryptionPublicKey": encryption_key_b64,
        "chipName": hardware.chip_name,
        "hardwareModel": hardware.machine_model,
        "osVersion": platform.release(),
        "engine": engine,
        "engineVersion": __version__,
        "timestamp": now_stamp(),
        **posture(),
    }
    if serial := machine_serial():
        inner["serialNumber"] = serial
    signed = canonical_json(inner)
    return {"attestation": inner, "attestation_raw": base64.b64encode(signed).decode("ascii"),
            "signature": identity.sign(attestation_message(signed))}


CHAIN_FILE = "chain.pem"


def load_chain(config_dir: Path) -> list[str] | None:
    """The installed certificate chain (leaf first) as base64 DER, for register.certificate_chain."""
    path = config_dir / CHAIN_FILE
    if not path.is_file():
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs = x509.load_pem_x509_certificates(path.read_bytes())
    return [base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in certs]


def machine_serial() -> str | None:
    return _read("/sys/class/dmi/id/product_serial")
