"""Connected providers as the coordinator sees them: identity, models, slots and an outbox."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.public import PublicKey
from pydantic import BaseModel

from darkbloom.protocol import encode
from darkbloom.protocol.frames import Hardware

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ProviderConn:
    """One live provider WebSocket session (a reconnect is a new session with a new id)."""

    id: str
    account_id: str | None
    models: frozenset[str]
    public_key: PublicKey
    public_key_b64: str
    max_concurrency: int
    hardware: Hardware
    backend: str
    version: str
    outbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    in_flight: int = 0
    served: int = 0
    connected_at: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    closed: bool = False
    trust_level: str = "none"
    untrusted: bool = False  # failed challenges, a posture regression, quarantine: never routed
    strikes: int = 0  # consecutive failed challenges; any strike makes it unroutable for now
    # Monotonic time of the last passed challenge on this connection; None before the first one
    # and after any failure. An attested provider is routed only while it is recent.
    last_pass: float | None = None
    token_id: str | None = None  # the provider token it authenticated with, for revocation
    # Closes this session's socket from elsewhere (replaced, token revoked); set by the session.
    kick: Callable[[int, str], None] | None = field(default=None, repr=False)
    identity_key: str | None = None
    serial: str | None = None
    attestation_raw: str | None = None
    attestation_signature: str | None = None
    certificate_chain: list[str] | None = None

    @property
    def free_slots(self) -> int:
        return self.max_concurrency - self.in_flight

    def send(self, frame: BaseModel) -> bool:
        """Queue a frame for the connection's writer task; never blocks the caller."""
        if self.closed:
            return False
        self.outbox.put_nowait(encode(frame))
        return True
