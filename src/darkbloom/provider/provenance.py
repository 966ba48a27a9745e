"""The provider's effective settings and where each came from (`darkbloom config show`).

Sources, strongest first: `flag --x` (what a command passed), `env DARKBLOOM_PROVIDER_X`,
`file <config_dir>/provider.toml` (or `file <config_dir>/token` for the token), `default`. Values
are for display: the token shows only whether one is set, coordinator URLs lose any userinfo and
query (where a careless operator might have put a secret).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, ValidationError
from pydantic_settings import SettingsError

from darkbloom.config import (
    COORDINATOR_FIELDS,
    ProviderSettings,
    env_value,
    file_key,
    read_provider_file,
    resolve_config_dir,
)
from darkbloom.provider.config_files import CONFIG_FILE, TOKEN_FILE, read_token

# The flags `darkbloom serve`/`start` and `config show` share, by the field each sets.
FLAG_NAMES: dict[str, str] = {
    "coordinator_urls": "--coordinator", "models": "--model", "slots": "--slots",
    "threads": "--threads", "idle_timeout_mins": "--idle-timeout", "engine": "--engine",
}
ENV_PREFIX = "DARKBLOOM_PROVIDER_"


@dataclass(frozen=True, slots=True)
class Effective:
    name: str  # the ProviderSettings field
    key: str | None  # its provider.toml key ("backend.slots"); None when the file cannot set it
    value: Any  # JSON-ready and safe to print
    source: str  # "default", "file <path>", "env <NAME>" or "flag --x"


def env_names(name: str) -> list[str]:
    """The environment variables that set a field, strongest first."""
    alias = ProviderSettings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices
                if isinstance(choice, str) and choice.upper().startswith("DARKBLOOM_")]
    return [f"{ENV_PREFIX}{name.upper()}"]


def _flag_or_env(name: str, flags: Mapping[str, Any]) -> str | None:
    if name in flags:
        return f"flag {FLAG_NAMES.get(name, '--' + name.replace('_', '-'))}"
    for variable in env_names(name):
        found = env_value(variable)
        if found is not None:
            return f"env {found[0]}"
    return None


def source_of(name: str, flags: Mapping[str, Any], file_values: Mapping[str, Any] | None = None,
              config_dir: Any = None) -> str:
    """Where the field's value comes from, given the flags a command passes ({field: value}).
    `file_values` (read_provider_file's answer) is read here when not given."""
    stronger = _flag_or_env(name, flags)
    if stronger is not None:
        return stronger
    if name == "config_dir":
        return "default"
    if name in COORDINATOR_FIELDS and any(_flag_or_env(other, flags) for other in COORDINATOR_FIELDS):
        return "default"  # the file's coordinators are outranked (without_outranked_coordinators)
    directory = resolve_config_dir(config_dir if config_dir is not None else flags.get("config_dir"))
    if file_values is None:
        file_values = read_provider_file(directory / CONFIG_FILE)
    if name in file_values:
        return f"file {directory / CONFIG_FILE}"
    if name == "token" and read_token(directory) is not None:
        return f"file {directory / TOKEN_FILE}"
    return "default"


def effective_config(flags: Mapping[str, Any] | None = None) -> tuple[ProviderSettings, list[Effective]]:
    """Build ProviderSettings as a command passing `flags` ({field: value}) would, and say where
    each value came from. Raises what ProviderSettings raises (ProviderConfigError for an unusable
    file, ValidationError for a bad flag or variable)."""
    from darkbloom.provider.agent import redact_url

    flags = dict(flags or {})
    settings = ProviderSettings(**flags)
    file_values = read_provider_file(settings.config_file)
    shown: dict[str, Any] = settings.model_dump(mode="json")
    shown["token"] = "set" if settings.token is not None else None
    shown["coordinator_url"] = redact_url(settings.coordinator_url)
    shown["coordinator_urls"] = [redact_url(url) for url in settings.coordinator_urls]
    return settings, [
        Effective(name, file_key(name), shown[name],
                  source_of(name, flags, file_values, settings.config_dir))
        for name in ProviderSettings.model_fields
    ]


def settings_error(exc: ValidationError, flags: Mapping[str, Any]) -> str:
    """One line for a flag or variable ProviderSettings refused, naming where it came from and
    never echoing the value (it may be a token or a URL with a secret in it)."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    if name not in ProviderSettings.model_fields:  # an alias such as DARKBLOOM_LOG_FORMAT
        name = next((field for field in ProviderSettings.model_fields
                     if any(variable.lower() == name.lower() for variable in env_names(field))), name)
    try:
        where = source_of(name, flags) if name in ProviderSettings.model_fields else "settings"
    except ValueError:
        where = "settings"
    return f"{name} ({where}): {error['msg'].removeprefix('Value error, ')}"


def env_parse_error(exc: SettingsError) -> str:
    """One line for a variable pydantic-settings could not parse: the list and table settings
    (models, schedule, ...) take JSON in the environment."""
    field = re.search(r'field "(\w+)"', str(exc))
    name = field[1] if field else ""
    if name not in ProviderSettings.model_fields:
        return str(exc)
    variable = env_names(name)[0]
    example = """, e.g. '["smollm2-135m"]'""" if name == "models" else " (docs/provider-config.md)"
    return f"{name} (env {variable}): not JSON; this variable takes JSON{example}"
