"""Keys, signing and sealing. Pure functions over bytes: no I/O, nothing else of ours imported."""

from darkbloom.crypto.sealing import (
    Channel,
    KeyPair,
    SealingError,
    SessionChannel,
    b64decode,
    b64encode,
    public_key_from_b64,
)

__all__ = ["Channel", "KeyPair", "SealingError", "SessionChannel", "b64decode", "b64encode",
           "public_key_from_b64"]
