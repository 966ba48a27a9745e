"""`darkbloom config show|path`: the provider's settings in effect, and where each came from."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from darkbloom.cli import provider_flags
from darkbloom.cli.provider_common import provider_settings
from darkbloom.provider.config_files import ProviderConfigError

config_app = typer.Typer(
    help="The provider's config file (provider.toml) and the settings in effect.",
    no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


class SettingsAwareTyper(typer.Typer):
    """The `darkbloom` app: a provider config file (or token file) that cannot be used, or a
    variable that is not the JSON it should be, is one red line and exit 2 from any command that
    builds ProviderSettings, not a traceback, without each command catching it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pydantic_settings import SettingsError

        from darkbloom.provider.provenance import env_parse_error

        try:
            return super().__call__(*args, **kwargs)
        except (ProviderConfigError, SettingsError) as exc:
            line = env_parse_error(exc) if isinstance(exc, SettingsError) else str(exc)
            err_console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
            sys.exit(2)


@config_app.command("show")
def show(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
    coordinator: provider_flags.Coordinators = None,
    model: provider_flags.Models = None,
    slots: provider_flags.Slots = None,
    threads: provider_flags.Threads = None,
    idle_timeout: provider_flags.IdleTimeout = None,
    engine: provider_flags.Engine = None,
) -> None:
    """Print the provider's settings in effect and where each came from: flag, environment
    variable (DARKBLOOM_PROVIDER_*), config file, or default. The token is never printed, only
    whether one is set and where from.

    Example: darkbloom config show --json | jq .settings.models
    """
    from darkbloom.provider.provenance import effective_config

    flags = provider_flags.flags(coordinator, model, slots, threads, idle_timeout, engine)
    provider_settings(flags)  # a bad file, variable or flag: one line, exit 2
    settings, rows = effective_config(flags)
    if json_output:
        print(json.dumps({
            "config_file": str(settings.config_file),
            "config_file_exists": settings.config_file.is_file(),
            "settings": {row.name: {"value": row.value, "source": row.source, "key": row.key}
                         for row in rows},
        }, indent=2))
        return
    found = "" if settings.config_file.is_file() else " (not found: defaults apply)"
    console.print(Text(f"config file: {settings.config_file}{found}"), soft_wrap=True)
    table = Table()
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    for row in rows:
        table.add_row(Text(row.key or row.name), Text(_human(row.name, row.value)), Text(row.source))
    console.print(table)


@config_app.command("path")
def path() -> None:
    """Print the config file's path (whether or not it exists), e.g. for `$EDITOR "$(darkbloom
    config path)"`. DARKBLOOM_PROVIDER_CONFIG_DIR moves it."""
    from darkbloom.config import resolve_config_dir
    from darkbloom.provider.config_files import CONFIG_FILE

    print(resolve_config_dir() / CONFIG_FILE)


def _human(name: str, value: Any) -> str:
    if name == "token":
        return "set" if value else "not set"
    if name == "schedule":
        if not value["enabled"]:
            return "off (always serving)"
        return "; ".join(f"{','.join(w['days'])} {w['start']}-{w['end']}" for w in value["windows"])
    if name == "idle_timeout_mins" and value == 0:
        return "0 (never unload)"
    if value is None:
        return "auto"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)
