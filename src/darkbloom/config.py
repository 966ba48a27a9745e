"""Settings, read once (from DARKBLOOM_* environment variables, and for the provider also its
config file) and passed down explicitly."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, computed_field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from darkbloom.coordinator.trust.manifest import RuntimeManifest
from darkbloom.inference.catalog import MODEL_ID
from darkbloom.provider.config_files import (
    CONFIG_DIR_ENV,
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    ProviderConfigError,
    default_config_dir,
    read_bounded_text,
    read_token,
)
from darkbloom.provider.schedule import Schedule


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARKBLOOM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Behind a reverse proxy: the client address comes from X-Forwarded-For only when the peer is
    # one of these (comma-separated IPs, or "*"). Empty: the TCP peer is the client, whatever the
    # headers say (per-IP limits cannot be dodged by sending the header).
    forwarded_allow_ips: str = ""
    state_dir: Path = Path(".darkbloom")
    database_url_override: str | None = Field(default=None, alias="DARKBLOOM_DATABASE_URL")
    # What coordinators share (rate-limit counts, ...): redis://[:password@]host:port/db,
    # rediss:// or unix://. Unset: each process keeps its own, in memory.
    redis_url: str | None = Field(default=None, alias="DARKBLOOM_REDIS_URL")
    # Every key this network writes to Redis starts with "<prefix>:", so separate networks (or
    # test runs) can share one Redis without colliding.
    redis_prefix: str = Field(default="darkbloom", min_length=1, max_length=64,
                              pattern=r"^[A-Za-z0-9_.-]+$")
    log_level: str = "info"
    # "json": one JSON object per log line (docs/observability.md); "text" for people.
    log_format: Literal["text", "json"] = "text"
    # api.md §10: GET /metrics (Prometheus text, no auth) for a scraper on a private network.
    # Off: a 404, and the same metrics stay at GET /v1/admin/metrics?format=prom for admins.
    metrics_public: bool = False

    # Catalog entries added to the built-in ones (TOML or JSON; coordinator/catalog_file.py):
    # models providers download from the URL given, checked against its size and SHA-256.
    catalog_file: Path | None = None

    allow_anonymous_providers: bool = False
    # Provider sessions one provider token may hold on one coordinator at once (one per machine;
    # a fleet shares a token). Each costs memory here (~95 kB) and a place in every routing walk.
    max_sessions_per_token: int = Field(default=256, ge=1)
    # trust.md §9: self_signed by default (hardware needs an operator CA, not built yet).
    min_trust_level: Literal["none", "self_signed", "hardware"] = "self_signed"
    # trust.md §4: challenge every 5 minutes, 30 s to answer, 3 strikes and out.
    challenge_interval_s: float = 300.0
    challenge_timeout_s: float = 30.0
    challenge_max_strikes: int = 3
    # trust.md §4 Decision: an untrusted identity key (and vouched serial) stays unroutable this
    # long, across reconnects and coordinator restarts.
    quarantine_s: float = 3600.0
    # trust.md §9 `require_posture`, e.g. {"core_dumps_disabled": true, "ptrace_scope": 1}: booleans
    # and strings must match, ptrace_scope and kernel_lockdown are minimums. Empty: nothing required.
    require_posture: dict[str, bool | int | str] = Field(default_factory=dict)
    # How often revoked provider tokens are looked up, to close their live sockets.
    provider_token_poll_s: float = 3.0
    # How often every process looks for API keys revoked elsewhere (another process, the CLI).
    key_revocation_poll_s: float = Field(default=1.0, gt=0, le=60)
    # PEM files of the operator CA roots that can grant `hardware` trust (trust.md §9).
    trust_root_ca_files: list[Path] = Field(default_factory=list)
    # api.md §10, trust.md: the known-good runtime, as JSON {"python_hashes": [...],
    # "runtime_hashes": [...], "template_hashes": {"<model>": "<sha256>"}}; empty checks nothing.
    # A provider off it stays connected and is never routed.
    runtime_manifest: RuntimeManifest = Field(default_factory=RuntimeManifest)
    # protocol.md §2: a provider below this version (semver) is refused with 4003; empty: any.
    min_provider_version: str = ""
    # How often changed provider reputations are written to the database (protocol.md §7).
    reputation_flush_s: float = Field(default=5.0, gt=0)
    heartbeat_interval_s: int = 5
    heartbeat_timeout_s: float = 90.0
    register_timeout_s: float = 10.0
    # protocol.md §7: per-model FIFO of 10, 120 s wait.
    queue_max_per_model: int = 10
    queue_timeout_s: float = 120.0
    max_attempts: int = 3
    first_response_timeout_s: float = 10.0
    accepted_timeout_s: float = 600.0
    chunk_timeout_s: float = 600.0
    max_body_bytes: int = 4 * 1024 * 1024
    # Bounds on one response (coordinator/dispatch.py): bytes from the provider, bytes waiting for
    # a slow consumer, and time from dispatch to the end.
    max_response_bytes: int = 64 * 1024 * 1024
    max_buffered_bytes: int = 16 * 1024 * 1024
    response_deadline_s: float = 1800.0
    default_max_tokens: int = 8192
    # Sessions (issue 9): a session unused this long is gone; sign in again (ten years at most).
    session_idle_days: float = Field(default=30.0, gt=0, le=3650)
    # Accounts whose sessions are admin: a JSON list, DARKBLOOM_ADMIN_EMAILS='["ops@example.com"]'.
    admin_emails: list[str] = Field(default_factory=list)
    # `Authorization: Bearer <this>` is admin on admin routes (compared in constant time).
    admin_key: SecretStr | None = None

    # --- money (billing.md) ---------------------------------------------------------------
    # billing.md §7: the platform's share of each request's cost, in basis points (0 in alpha),
    # and the referrer's share of that fee.
    platform_fee_bps: int = Field(default=0, ge=0, le=5000)
    referral_share_pct: int = Field(default=20, ge=0, le=50)
    # billing.md §4: open reservations older than this are refunded when a coordinator starts.
    orphan_reservation_s: float = Field(default=900.0, gt=0)
    # How often a running coordinator looks for such holds (and for settlements that failed).
    orphan_sweep_s: float = Field(default=300.0, gt=0)
    # How often admin prices set through another coordinator process are picked up.
    price_reload_s: float = Field(default=5.0, gt=0)
    # Stripe (billing.md §6, §9). Without the secret key the Stripe routes answer 503 billing_error.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_connect_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"
    # Where Checkout and Connect onboarding send the browser back (the console); redirect URLs a
    # client passes must share this origin (or be localhost).
    public_url: str = "http://127.0.0.1:8000"
    # The one origin whose pages may call the API with credentials (api.md §1 CORS); by default
    # public_url's origin, where the console is.
    cors_origin: str | None = None
    stripe_max_checkout_micro_usd: int = Field(default=10_000 * 1_000_000, gt=0)
    # Rate limits per account (api.md §1, docs/rate-limits.md): financial routes (key creation,
    # checkout, referral, invites, withdrawals) and inference routes; 0 turns a tier off.
    financial_rate_per_s: float = Field(default=0.2, ge=0)
    financial_burst: int = Field(default=3, ge=1)
    inference_rate_per_s: float = Field(default=1.0, ge=0)
    inference_burst: int = Field(default=10, ge=1)
    # Accounts no tier limits (a JSON list): `darkbloom up` puts its dev consumer here.
    rate_limit_exempt_accounts: list[str] = Field(default_factory=list)
    # Device-code login (api.md §6, docs/device-login.md): how long a code pair lives, how often
    # the machine may poll, and how many pairs one client address may ask for per minute (0: off).
    device_code_lifetime_s: int = Field(default=900, ge=10, le=86_400)
    device_poll_interval_s: int = Field(default=5, ge=1, le=600)
    device_codes_per_minute: int = Field(default=10, ge=0, le=100_000)

    # Public network data (api.md §9): how long each answer is cached in each process.
    stats_cache_s: float = Field(default=10.0, ge=0, le=3600)
    leaderboard_cache_s: float = Field(default=300.0, ge=0, le=86400)
    network_totals_cache_s: float = Field(default=60.0, ge=0, le=86400)

    @field_validator("require_posture")
    @classmethod
    def _known_posture(cls, value: dict[str, bool | int | str]) -> dict[str, bool | int | str]:
        kinds = {"core_dumps_disabled": bool, "secure_boot_enabled": bool, "ptrace_scope": int,
                 "kernel_lockdown": str, "platform": str}
        for name, want in value.items():
            if name not in kinds or type(want) is not kinds[name]:
                raise ValueError(f"require_posture: {name!r} must be one of "
                                 f"{', '.join(f'{k} ({t.__name__})' for k, t in kinds.items())}")
            if name == "kernel_lockdown" and want not in ("none", "integrity", "confidentiality"):
                raise ValueError("require_posture: kernel_lockdown is none, integrity or confidentiality")
        return value

    @field_validator("admin_emails")
    @classmethod
    def _normalised_emails(cls, value: list[str]) -> list[str]:
        return [email.strip().lower() for email in value if email.strip()]

    @field_validator("min_provider_version")
    @classmethod
    def _readable_version(cls, value: str) -> str:
        """A minimum the gate cannot read would bar nobody without a word: refused at start."""
        from darkbloom.semver import parse

        if value and parse(value) is None:
            raise ValueError("min_provider_version must be a version such as 0.4.0")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        """Refused at start-up rather than on the first request that needs Redis."""
        if not value:
            return None
        if value.partition("://")[0].lower() not in ("redis", "rediss", "unix") or "://" not in value:
            raise ValueError("DARKBLOOM_REDIS_URL must be redis://, rediss:// or unix://")
        return value

    @property
    def pass_window_s(self) -> float:
        """trust.md §4: routing needs a pass this recent (6 minutes for the 5-minute interval):
        one interval plus the answer deadline, plus a tenth of the interval for scheduling slack."""
        return self.challenge_interval_s * 1.1 + self.challenge_timeout_s

    @computed_field  # type: ignore[prop-decorator]
    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite+aiosqlite:///{(self.state_dir / 'coordinator.db').resolve()}"


Engine = Literal["llama.cpp", "mlx-lm", "vllm"]

# provider.toml (docs/provider-config.md): each [section] key and the ProviderSettings field it sets.
# [schedule] (enabled and [[schedule.windows]]) is the `schedule` field as a whole.
FILE_KEYS: dict[str, dict[str, str]] = {
    "coordinator": {"url": "coordinator_url", "urls": "coordinator_urls",
                    "heartbeat_interval_secs": "heartbeat_interval_s"},
    "backend": {"models": "models", "idle_timeout_mins": "idle_timeout_mins", "slots": "slots",
                "threads": "threads", "engine": "engine", "prefix_cache": "prefix_cache"},
}
SCHEDULE_SECTION = "schedule"


def file_key(field_name: str) -> str | None:
    """The provider.toml key that sets a field ("backend.slots"), or None when the file cannot."""
    if field_name == "schedule":
        return SCHEDULE_SECTION
    for section, keys in FILE_KEYS.items():
        for key, name in keys.items():
            if name == field_name:
                return f"{section}.{key}"
    return None


class ProviderSettings(BaseSettings):
    """The provider's settings. Precedence: constructor arguments (CLI flags) > DARKBLOOM_PROVIDER_*
    environment variables > <config_dir>/provider.toml > defaults; the token, when neither a flag
    nor the environment gives one, comes from <config_dir>/token (written by `darkbloom login`).
    A file that cannot be used raises ProviderConfigError (one line naming the file and key)."""

    model_config = SettingsConfigDict(env_prefix="DARKBLOOM_PROVIDER_", extra="ignore")

    coordinator_url: str = "ws://127.0.0.1:8000/ws/provider"
    # Several coordinators of one network, in failover order: comma-separated in
    # DARKBLOOM_PROVIDER_COORDINATOR_URLS, or `serve --coordinator` repeated. When set it wins over
    # coordinator_url. The agent holds one session at a time (docs/provider-failover.md).
    coordinator_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    token: SecretStr | None = None
    # Holds provider.toml, the token and identity.pem (the persistent P-256 identity key, 0600).
    # Where provider.toml is read from, so it cannot itself be set there.
    config_dir: Path = Field(default_factory=default_config_dir)
    # Ids or aliases (MODEL_ID): they reach command lines and the systemd unit as they are.
    models: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["smollm2-135m"], min_length=1, max_length=32)
    # Unload models after this many minutes without a request (0: never); the next one reloads.
    idle_timeout_mins: int = Field(default=60, ge=0, le=525_600)
    # Sequences decoded together per model (llama.cpp: one context, continuous batching); the
    # provider advertises exactly this many. None: the engine's choice (llama.cpp: as many as
    # fit a KV budget, at most 8; media engines: 1).
    slots: int | None = Field(default=None, ge=1, le=256)
    # KV prefix reuse between one account's requests (docs/decisions.md "Prefix cache").
    prefix_cache: Literal["extend", "any", "off"] = "extend"
    threads: int | None = Field(default=None, ge=1, le=1024)
    # None: chosen by machine (mlx-lm on Apple Silicon, vLLM with an NVIDIA GPU, else llama.cpp).
    engine: Engine | None = None
    # When the provider serves (local time); disabled: always.
    schedule: Schedule = Field(default_factory=Schedule)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=60)
    reconnect_initial_s: float = 1.0
    # protocol.md §9 says 5 s; issue 10 wants providers back within 5 s of a coordinator restart,
    # and a 5 s wait plus registering and the first challenge would overrun it.
    reconnect_max_s: float = 3.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 30.0
    log_level: str = "info"
    # The coordinator's setting (DARKBLOOM_LOG_FORMAT) serves both processes of one machine.
    log_format: Literal["text", "json"] = Field(default="text", validation_alias=AliasChoices(
        "DARKBLOOM_PROVIDER_LOG_FORMAT", "DARKBLOOM_LOG_FORMAT", "log_format"))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        explicit = init_settings.init_kwargs.get("config_dir") \
            if isinstance(init_settings, InitSettingsSource) else None
        config_dir = resolve_config_dir(explicit)
        return (init_settings, env_settings, _ProviderFileSource(settings_cls, config_dir),
                _TokenFileSource(settings_cls, config_dir))

    @field_validator("coordinator_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        """Comma-separated text or a list whose items may themselves hold commas; blanks are
        dropped, repeats kept once (a URL listed twice would only delay failover)."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        urls: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError("coordinator URLs must be text")
            for url in (part.strip() for part in item.split(",")):
                if url and url not in urls:
                    urls.append(url)
        if len(urls) > 16:
            raise ValueError("at most 16 coordinator URLs")
        for url in urls:
            _check_coordinator_url(url)
        return urls

    @field_validator("models")
    @classmethod
    def _model_ids(cls, value: list[str]) -> list[str]:
        for name in value:
            if not MODEL_ID.fullmatch(name):
                raise ValueError("a model id is letters, digits and . _ : / + - (starting with a "
                                 "letter or digit), as `darkbloom models list` shows it")
        return value

    @field_validator("coordinator_url")
    @classmethod
    def _one_url(cls, value: str) -> str:
        """The single URL is checked as each of coordinator_urls is (every command uses it)."""
        _check_coordinator_url(value.strip())
        return value.strip()

    @property
    def coordinators(self) -> list[str]:
        """The URLs to dial, in failover order (at least one)."""
        return list(self.coordinator_urls) or [self.coordinator_url]

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE


def _check_coordinator_url(url: str) -> None:
    """A provider URL: ws:// or wss://host[:port]/path, at most 2048 characters (ValueError)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("a coordinator URL is not a valid URL") from None
    if len(url) > 2048 or parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("each coordinator URL must be ws:// or wss://host[:port]/path, "
                         "at most 2048 characters")


def env_value(name: str) -> tuple[str, str] | None:
    """(the variable's name as set, its value), matching `name` regardless of case as
    pydantic-settings does; None when unset."""
    if name in os.environ:
        return name, os.environ[name]
    for key, value in os.environ.items():
        if key.upper() == name.upper():
            return key, value
    return None


def resolve_config_dir(explicit: object = None) -> Path:
    """The config dir a ProviderSettings built now would use: the constructor's config_dir, else
    DARKBLOOM_PROVIDER_CONFIG_DIR, else the platform's (default_config_dir)."""
    if isinstance(explicit, (str, Path)):
        return Path(explicit)
    from_env = env_value(CONFIG_DIR_ENV)
    return Path(from_env[1]) if from_env is not None else default_config_dir()


def read_provider_file(path: Path) -> dict[str, Any]:
    """provider.toml's settings as {field name: value}, each checked against its field (strictly:
    TOML has real types, so "5" is not a number); {} when there is no file. Anything
    wrong raises ProviderConfigError: one line with the file, the key and what is allowed."""
    text = read_bounded_text(path, MAX_CONFIG_BYTES, "config file")
    if text is None:
        return {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProviderConfigError(f"{path}: not valid TOML: {exc}{_toml_hint(text, str(exc))}") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise ProviderConfigError(f"{path}: not valid TOML: nested too deeply") from None
    sections = [*FILE_KEYS, SCHEDULE_SECTION]
    values: dict[str, Any] = {}
    for section, body in document.items():
        if section not in sections:
            what = f"section [{section}]" if isinstance(body, dict) else f"key {section} at the top"
            raise ProviderConfigError(f"{path}: unknown {what} (allowed: "
                                      f"{', '.join(f'[{name}]' for name in sections)})")
        if not isinstance(body, dict):
            raise ProviderConfigError(f"{path}: {section} must be a table: write [{section}] and "
                                      "its keys below it")
        if section == SCHEDULE_SECTION:
            values["schedule"] = body
            continue
        allowed = FILE_KEYS[section]
        for key, value in body.items():
            if key not in allowed:
                raise ProviderConfigError(f"{path}: unknown key {section}.{key} (allowed in "
                                          f"[{section}]: {', '.join(allowed)})")
            values[allowed[key]] = value
    probe = ProviderSettings.model_construct()
    for name, value in values.items():
        try:
            ProviderSettings.__pydantic_validator__.validate_assignment(probe, name, value, strict=True)
        except ValidationError as exc:
            raise ProviderConfigError(f"{path}: {_file_error(name, exc)}") from None
    # The checked values, not the TOML tables: a Schedule, not a dict, so that a schedule from the
    # environment replaces the file's whole rather than being merged into it key by key.
    return {name: getattr(probe, name) for name in values}


def _toml_hint(text: str, error: str) -> str:
    """The one slip TOML's own message does not explain: a schedule time left unquoted."""
    where = re.search(r"at line (\d+)", error)
    lines = text.splitlines()
    if where and 0 < int(where[1]) <= len(lines) and \
            re.search(r"=\s*\d{1,2}:\d{2}\s*(#.*)?$", lines[int(where[1]) - 1]):
        return '; quote times: start = "22:00"'
    return ""


_TOML_TYPES = {str: "text", bool: "true/false", int: "a whole number", float: "a number",
               list: "an array", dict: "a table"}


def _file_error(name: str, exc: ValidationError) -> str:
    """`key: what is wrong`, for the first error, an unknown key before what it displaced. Never
    the value itself (it may be a URL with a secret in it)."""
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
    error = errors[0]
    key = file_key(name) or name
    for part in error["loc"][1:]:
        key += f" #{part + 1}" if isinstance(part, int) else f".{part}"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}"
    message = error["msg"].removeprefix("Value error, ")
    given = _TOML_TYPES.get(type(error["input"]), type(error["input"]).__name__)
    if error["type"].endswith("_type"):
        message += f" (got {given})"
    return f"{key}: {message}"


COORDINATOR_FIELDS = ("coordinator_url", "coordinator_urls")


def without_outranked_coordinators(file_values: dict[str, Any],
                                   stronger: Mapping[str, Any]) -> dict[str, Any]:
    """The file's values less its coordinator URLs when a stronger source names a coordinator:
    `url` and `urls` are one setting, or the file's `urls` (which wins over `url`) would beat
    DARKBLOOM_PROVIDER_COORDINATOR_URL and send a provider to a coordinator nobody asked for."""
    if any(name in stronger for name in COORDINATOR_FIELDS):
        return {name: value for name, value in file_values.items() if name not in COORDINATOR_FIELDS}
    return file_values


class _ProviderFileSource(PydanticBaseSettingsSource):
    """<config_dir>/provider.toml, below the environment and above the defaults."""

    def __init__(self, settings_cls: type[BaseSettings], config_dir: Path) -> None:
        super().__init__(settings_cls)
        self.path = config_dir / CONFIG_FILE

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        return without_outranked_coordinators(read_provider_file(self.path), self.current_state)


class _TokenFileSource(PydanticBaseSettingsSource):
    """<config_dir>/token (from `darkbloom login`), used when no flag or variable gives a token."""

    def __init__(self, settings_cls: type[BaseSettings], config_dir: Path) -> None:
        super().__init__(settings_cls)
        self.config_dir = config_dir

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if "token" in self.current_state:  # a flag or variable gave one: the file is not even read
            return {}
        token = read_token(self.config_dir)
        return {} if token is None else {"token": token}


@lru_cache(maxsize=1)
def get_coordinator_settings() -> CoordinatorSettings:
    return CoordinatorSettings()


@lru_cache(maxsize=1)
def get_provider_settings() -> ProviderSettings:
    return ProviderSettings()


