"""WebSocket frames between provider and coordinator (protocol.md §4-§6).

Every frame is one JSON object with a ``type`` discriminator and a protocol major version ``v``.
Models ignore unknown fields so additive changes need no version bump.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from darkbloom.protocol.trust import SignedReceipt

# 2: domain-separated signatures, direction-bound chunk sealing, typed receipts (v 2).
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 2
MAX_FRAME_BYTES = 10 * 1024 * 1024
# A request frame (coordinator -> provider) may carry a whole audio upload: 25 MiB, base64 in the
# sealed JSON, sealed and base64 again (media.md). Everything else stays within MAX_FRAME_BYTES.
MAX_REQUEST_FRAME_BYTES = 48 * 1024 * 1024

# Close codes (protocol.md §2).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_REPLACED = 4000
CLOSE_BAD_TOKEN = 4001
CLOSE_PROTOCOL_ORDER = 4002
CLOSE_VERSION_TOO_OLD = 4003
CLOSE_EVICTED = 4004
CLOSE_UNSUPPORTED_VERSION = 4400


class Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = PROTOCOL_VERSION


class Sealed(BaseModel):
    """A sealed message: the sender's X25519 public key and base64(nonce24 ‖ ciphertext), sealed
    with ``crypto.SessionChannel`` (bound to direction, request id and sequence number)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    ephemeral_public_key: str
    ciphertext: str


# --- provider -> coordinator -------------------------------------------------------------


class CpuCores(BaseModel):
    model_config = ConfigDict(extra="ignore")
    total: int = 0
    performance: int = 0
    efficiency: int = 0


class Hardware(BaseModel):
    model_config = ConfigDict(extra="ignore")
    machine_model: str = ""
    chip_name: str = ""
    chip_family: str = ""
    chip_tier: str = ""
    memory_gb: int = 0
    memory_available_gb: float = 0.0
    cpu_cores: CpuCores = Field(default_factory=CpuCores)
    gpu_cores: int = 0
    memory_bandwidth_gbs: float = 0.0
    # Ours, for non-Apple machines.
    accelerator: Literal["metal", "cuda", "rocm", "cpu"] | None = None
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    size_bytes: int = 0
    model_type: str = "text"
    quantization: str = ""
    weight_hash: str | None = None
    context_length: int | None = None
    # Ours: this model's own slots on the provider (requests it runs at once), and what its
    # engine can do (provider/engines/base.py CAPABILITIES); None: not said (an older provider,
    # taken as every capability and the provider's max_concurrency).
    slots: int | None = None
    capabilities: list[str] | None = None


class Register(Frame):
    type: Literal["register"] = "register"
    hardware: Hardware = Field(default_factory=Hardware)
    models: list[ModelInfo] = Field(default_factory=list)
    backend: str = ""
    version: str = ""
    public_key: str = ""
    encrypted_response_chunks: bool = True
    attestation: dict[str, object] | None = None
    certificate_chain: list[str] | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    auth_token: str | None = None
    python_hash: str | None = None
    runtime_hash: str | None = None
    template_hashes: dict[str, str] | None = None
    privacy_capabilities: dict[str, bool] | None = None
    max_concurrency: int | None = None


class Stats(BaseModel):
    model_config = ConfigDict(extra="ignore")
    requests_served: int = 0
    tokens_generated: int = 0


class SystemMetrics(BaseModel):
    model_config = ConfigDict(extra="ignore")
    memory_pressure: float = 0.0
    cpu_usage: float = 0.0
    thermal_state: Literal["nominal", "fair", "serious", "critical"] = "nominal"


class Slot(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    state: Literal["running", "idle_shutdown", "crashed", "reloading"] = "running"
    num_running: int = 0
    num_waiting: int = 0
    active_tokens: int = 0
    max_tokens_potential: int = 0


class BackendCapacity(BaseModel):
    model_config = ConfigDict(extra="ignore")
    slots: list[Slot] = Field(default_factory=list)
    gpu_memory_active_gb: float = 0.0
    gpu_memory_peak_gb: float = 0.0
    gpu_memory_cache_gb: float = 0.0
    total_memory_gb: float = 0.0


class JobProgress(BaseModel):
    """A long media job's progress (media.md): audio seconds transcribed, or denoising steps
    done, of the whole. It keeps the coordinator's wait for the answer from timing out."""

    model_config = ConfigDict(extra="ignore")
    request_id: str = Field(min_length=1, max_length=128)
    unit: Literal["audio_seconds", "steps"]
    done: float = Field(ge=0, le=1e9)
    total: float = Field(ge=0, le=1e9)


class Heartbeat(Frame):
    type: Literal["heartbeat"] = "heartbeat"
    status: Literal["idle", "serving"] = "idle"
    active_model: str | None = None
    warm_models: list[str] = Field(default_factory=list)
    stats: Stats = Field(default_factory=Stats)
    system_metrics: SystemMetrics = Field(default_factory=SystemMetrics)
    backend_capacity: BackendCapacity | None = None
    progress: list[JobProgress] = Field(default_factory=list, max_length=256)


class InferenceAccepted(Frame):
    type: Literal["inference_accepted"] = "inference_accepted"
    request_id: str


class InferenceResponseChunk(Frame):
    type: Literal["inference_response_chunk"] = "inference_response_chunk"
    request_id: str
    seq: int
    encrypted_data: Sealed | None = None
    # Plaintext chunks are a protocol violation for text; kept only so the coordinator can see
    # (and punish) them instead of silently dropping the field.
    data: str | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    # Media (media.md): what the request is priced by, as the provider measured it.
    audio_ms: int | None = Field(default=None, ge=0, le=2**40)
    images: int | None = Field(default=None, ge=0, le=1024)


class InferenceComplete(Frame):
    type: Literal["inference_complete"] = "inference_complete"
    request_id: str
    usage: Usage
    finish_reason: str | None = None
    # None in consumer-blind mode: the receipt then travels sealed to the consumer.
    receipt: SignedReceipt | None = None


class InferenceError(Frame):
    type: Literal["inference_error"] = "inference_error"
    request_id: str
    error: str
    status_code: int = 500
    # Ours: machine-readable error code (e.g. context_length_exceeded) and the parameter at fault.
    code: str | None = None
    param: str | None = None
    # Consumer-blind mode: the message and param sealed to the consumer (direction "error");
    # ``error`` and ``param`` then say nothing about the request.
    sealed_message: str | None = Field(default=None, max_length=16384)


class AttestationResponse(Frame):
    type: Literal["attestation_response"] = "attestation_response"
    nonce: str
    signature: str
    public_key: str
    status_signature: str | None = None
    # Fresh posture (trust.md §9, Linux): covered by status_signature.
    platform: str | None = None
    core_dumps_disabled: bool | None = None
    ptrace_scope: int | None = None
    kernel_lockdown: str | None = None
    secure_boot_enabled: bool | None = None


# Ours (issue 14): the frames about one request, which a provider may send several of in one
# ``frame_batch`` message.
RequestFrame = Annotated[
    InferenceAccepted | InferenceResponseChunk | InferenceComplete | InferenceError,
    Field(discriminator="type"),
]
MAX_BATCH_FRAMES = 256


class FrameBatch(Frame):
    """Ours (issue 14): request frames a provider had ready at the same time, in one message, in
    order; sent only to a coordinator whose ``registered`` said ``frame_batches``. Each frame is
    handled exactly as if it had come alone (its own seq, its own sealing). One message instead
    of several: fewer wake-ups and syscalls on both sides when the provider's writer is behind
    (concurrent streams) or a stream has several events at once (its start, its end)."""

    type: Literal["frame_batch"] = "frame_batch"
    frames: list[RequestFrame] = Field(min_length=1, max_length=MAX_BATCH_FRAMES)


ProviderFrame = Annotated[
    Register
    | Heartbeat
    | InferenceAccepted
    | InferenceResponseChunk
    | InferenceComplete
    | InferenceError
    | AttestationResponse
    | FrameBatch,
    Field(discriminator="type"),
]

# --- coordinator -> provider -------------------------------------------------------------


class RejectedModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str
    reason: str


class Registered(Frame):
    type: Literal["registered"] = "registered"
    provider_id: str
    trust_level: Literal["none", "self_signed", "hardware"] = "none"
    routable: bool = True
    accepted_models: list[str] = Field(default_factory=list)
    rejected_models: list[RejectedModel] = Field(default_factory=list)
    heartbeat_interval_s: int = 5
    challenge_interval_s: int = 300
    server_time: str = ""
    # Ours: why the provider is not routable (quarantine, require_posture, no model, trust level).
    # An attested provider with ``routable`` true is routed once it passes its first challenge.
    reason: str = ""
    # Ours (issue 14): this coordinator reads ``frame_batch`` messages. Absent (an older
    # coordinator): the provider sends every frame alone.
    frame_batches: bool = False


Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
                   "/v1/audio/transcriptions", "/v1/images/generations"]


class InferenceRequest(Frame):
    type: Literal["inference_request"] = "inference_request"
    # What the provider seals and signs under (crypto.sealing allows 128 characters).
    request_id: str = Field(min_length=1, max_length=128)
    encrypted_body: Sealed
    model: str
    endpoint: Endpoint
    stream: bool
    max_tokens_cap: int = Field(ge=1)
    sealed_by: Literal["coordinator", "consumer"] = "coordinator"
    x_request_id: str | None = None  # the consumer's X-Request-ID, for the provider's log lines only
    # KV prefixes are reused only between requests with the same scope: one account's, opaque
    # (coordinator/routing/affinity.py). None: reuse nothing.
    cache_scope: str | None = Field(default=None, max_length=64)


class Cancel(Frame):
    type: Literal["cancel"] = "cancel"
    request_id: str


class AttestationChallenge(Frame):
    type: Literal["attestation_challenge"] = "attestation_challenge"
    nonce: str
    timestamp: str


class TrustUpdate(Frame):
    type: Literal["trust_update"] = "trust_update"
    trust_level: str
    routable: bool
    reason: str = ""


class RuntimeMismatch(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    component: str = Field(max_length=300)  # "python", "runtime" or "template:<name>"
    expected: str = Field(max_length=128)
    got: str = Field(max_length=128)


class RuntimeStatus(Frame):
    """protocol.md §5: sent after ``registered`` when the provider's runtime is not on the
    coordinator's manifest; the provider stays connected and is not routed."""

    type: Literal["runtime_status"] = "runtime_status"
    verified: bool
    mismatches: list[RuntimeMismatch] = Field(default_factory=list, max_length=64)


CoordinatorFrame = Annotated[
    Registered | InferenceRequest | Cancel | AttestationChallenge | TrustUpdate | RuntimeStatus,
    Field(discriminator="type"),
]

provider_frame_adapter: TypeAdapter[ProviderFrame] = TypeAdapter(ProviderFrame)
coordinator_frame_adapter: TypeAdapter[CoordinatorFrame] = TypeAdapter(CoordinatorFrame)

PROVIDER_FRAME_TYPES = frozenset(
    t.model_fields["type"].default
    for t in (
        Register,
        Heartbeat,
        InferenceAccepted,
        InferenceResponseChunk,
        InferenceComplete,
        InferenceError,
        AttestationResponse,
        FrameBatch,
    )
)
COORDINATOR_FRAME_TYPES = frozenset(
    t.model_fields["type"].default
    for t in (Registered, InferenceRequest, Cancel, AttestationChallenge, TrustUpdate,
              RuntimeStatus)
)
