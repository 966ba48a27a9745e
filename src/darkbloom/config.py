"""Settings, read once from DARKBLOOM_* environment variables and passed down explicitly."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARKBLOOM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    state_dir: Path = Path(".darkbloom")
    database_url_override: str | None = Field(default=None, alias="DARKBLOOM_DATABASE_URL")
    log_level: str = "info"

    allow_anonymous_providers: bool = False
    # trust.md §9: self_signed by default (hardware needs an operator CA, not built yet).
    min_trust_level: Literal["none", "self_signed", "hardware"] = "self_signed"
    # trust.md §4: challenge every 5 minutes, 30 s to answer, 3 strikes and out.
    challenge_interval_s: float = 300.0
    challenge_timeout_s: float = 30.0
    challenge_max_strikes: int = 3
    # PEM files of the operator CA roots that can grant `hardware` trust (trust.md §9).
    trust_root_ca_files: list[Path] = Field(default_factory=list)
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
    default_max_tokens: int = 8192

    @computed_field  # type: ignore[prop-decorator]
    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite+aiosqlite:///{(self.state_dir / 'coordinator.db').resolve()}"


class ProviderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARKBLOOM_PROVIDER_", extra="ignore")

    coordinator_url: str = "ws://127.0.0.1:8000/ws/provider"
    token: SecretStr | None = None
    # Holds identity.pem (the persistent P-256 identity key, mode 0600).
    config_dir: Path = Field(default_factory=lambda: Path.home() / ".config" / "darkbloom")
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"])
    # One llama.cpp context per slot; the provider advertises exactly this many.
    slots: int = 1
    threads: int | None = None
    heartbeat_interval_s: float = 5.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 5.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 30.0
    log_level: str = "info"


@lru_cache(maxsize=1)
def get_coordinator_settings() -> CoordinatorSettings:
    return CoordinatorSettings()


@lru_cache(maxsize=1)
def get_provider_settings() -> ProviderSettings:
    return ProviderSettings()


