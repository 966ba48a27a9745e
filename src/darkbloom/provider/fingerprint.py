"""What a provider runs, as hashes the coordinator can check against its runtime manifest
(protocol.md §4 `python_hash`, `runtime_hash`, `template_hashes`; trust.md: a mismatch makes the
provider unroutable, not untrusted). Computed once at start; none of it is secret."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def python_hash() -> str:
    """The interpreter binary this process runs (symlinks resolved)."""
    return file_sha256(Path(sys.executable).resolve())


def runtime_hash() -> str | None:
    """The inference runtime: llama.cpp's shared libraries as shipped in llama-cpp-python (every
    real file under its ``lib`` directory, in name order), or None where it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    if not lib.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in lib.iterdir() if p.is_file() and not p.is_symlink()):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def template_hash(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    python_hash: str
    runtime_hash: str | None


@lru_cache(maxsize=1)
def fingerprint() -> Fingerprint:
    return Fingerprint(python_hash(), runtime_hash())
