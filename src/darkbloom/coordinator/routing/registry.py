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
from darkbloom.protocol.frames import Hardware, Heartbeat

log = logging.getLogger(__name__)

# The most decode speed (tokens/s) routing believes before it has timed the provider itself.
UNMEASURED_MAX_TPS = 50.0


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
    # This coordinator's pending work on the provider, per model: requests and their summed
    # output budgets (the cost model's pending_model and pending_max).
    pending_by_model: dict[str, int] = field(default_factory=dict)
    pending_tokens_by_model: dict[str, int] = field(default_factory=dict)
    served: int = 0
    # Per model (from register; a model absent here: the provider's max_concurrency, and every
    # capability): its own slots on the provider, and what its engine can do.
    model_slots: dict[str, int] = field(default_factory=dict)
    model_capabilities: dict[str, frozenset[str]] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    closed: bool = False
    trust_level: str = "none"
    untrusted: bool = False  # failed challenges, a posture regression, quarantine: never routed
    # Set when its runtime is not on the coordinator's manifest: connected, never routed.
    runtime_mismatch: str | None = None
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
    # The last heartbeat, clamped (protocol.md §8): status, warm models, cumulative stats since the
    # provider process started, system metrics and per-model slot state. Routing reads it.
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    # Benchmark figures from register, clamped (decode ≤ 500, prefill ≤ 5 000 tokens/s); 0: none.
    reported_decode_tps: float = 0.0
    reported_prefill_tps: float = 0.0
    # Decode speed the coordinator measured on this provider's own answers (tokens/s, a moving
    # average); 0 until one has been measured.
    measured_decode_tps: float = 0.0
    # Scale-out (coordinator/cluster/link.py). ``home``: the coordinator holding a provider this
    # one only mirrors (None: the socket is ours). ``routable_until``: the home's verdict, as a
    # wall-clock deadline. ``cluster_in_flight``: slots other coordinators hold on it. The home's
    # reputation score of a mirrored provider.
    home: str | None = None
    routable_until: float | None = None
    cluster_in_flight: int = 0
    remote_reputation: float | None = None

    @property
    def decode_tps(self) -> float:
        """protocol.md §7: measured, else reported, else √(memory bandwidth), else 1. A figure the
        coordinator has not measured counts for at most ``UNMEASURED_MAX_TPS``: a provider that
        claims 500 and then fails every job is never timed, and must not buy traffic with it."""
        if self.measured_decode_tps > 0:
            return self.measured_decode_tps
        if self.reported_decode_tps > 0:
            return min(self.reported_decode_tps, UNMEASURED_MAX_TPS)
        bandwidth = self.hardware.memory_bandwidth_gbs
        return bandwidth ** 0.5 if bandwidth > 0 else 1.0

    @property
    def prefill_tps(self) -> float:
        return self.reported_prefill_tps if self.reported_prefill_tps > 0 else 4 * self.decode_tps

    @property
    def free_slots(self) -> int:
        return self.max_concurrency - self.in_flight - self.cluster_in_flight

    def has_room(self, model: str) -> bool:
        """A free slot on the machine, and one of the model's own."""
        return self.free_slots > 0 and (
            self.pending_by_model.get(model, 0) < self.model_slots.get(model, self.max_concurrency))

    def can(self, model: str, needs: frozenset[str]) -> bool:
        capable = self.model_capabilities.get(model)
        return capable is None or needs <= capable

    def take_slot(self, model: str, max_tokens: int) -> None:
        self.in_flight += 1
        self.pending_by_model[model] = self.pending_by_model.get(model, 0) + 1
        self.pending_tokens_by_model[model] = self.pending_tokens_by_model.get(model, 0) + max_tokens

    def free_slot(self, model: str, max_tokens: int) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.pending_by_model[model] = max(0, self.pending_by_model.get(model, 0) - 1)
        self.pending_tokens_by_model[model] = max(
            0, self.pending_tokens_by_model.get(model, 0) - max_tokens)

    def send(self, frame: BaseModel) -> bool:
        """Queue a frame for the connection's writer task; never blocks the caller."""
        if self.closed:
            return False
        self.outbox.put_nowait(encode(frame))
        return True
