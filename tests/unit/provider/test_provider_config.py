"""The provider's config file, its precedence against environment and flags, provenance, and the
token file (config.py, provider/config_files.py, provider/provenance.py)."""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from darkbloom.config import ProviderSettings, read_provider_file
from darkbloom.provider import config_files
from darkbloom.provider.config_files import (
    ProviderConfigError,
    default_config_dir,
    forget_token,
    read_token,
    save_token,
)
from darkbloom.provider.provenance import effective_config, settings_error
from darkbloom.provider.schedule import Schedule

DOC = Path(__file__).parents[3] / "docs" / "provider-config.md"
TOKEN = "darkbloom-pt-" + "ab" * 32


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config dir, named by the environment, with no other provider setting around."""
    for name in list(os.environ):
        if name.upper().startswith("DARKBLOOM_PROVIDER_") or name.upper() == "DARKBLOOM_LOG_FORMAT":
            monkeypatch.delenv(name)
    directory = tmp_path / "config"
    monkeypatch.setenv("DARKBLOOM_PROVIDER_CONFIG_DIR", str(directory))
    return directory


def write(config_dir: Path, text: str) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "provider.toml"
    path.write_text(text)
    return path


def sources(flags: dict[str, object] | None = None) -> dict[str, tuple[object, str]]:
    _, rows = effective_config(flags)
    return {row.name: (row.value, row.source) for row in rows}


# --- where the file is ---------------------------------------------------------------------------

def test_platform_config_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_config_dir() == tmp_path / ".config" / "darkbloom"
    monkeypatch.setenv("XDG_CONFIG_HOME", "/xdg")
    assert default_config_dir() == Path("/xdg/darkbloom")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # the XDG spec: ignored when relative
    assert default_config_dir() == tmp_path / ".config" / "darkbloom"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_config_dir() == tmp_path / "Library" / "Application Support" / "darkbloom"


def test_without_a_file_everything_is_default(config_dir: Path) -> None:
    settings = ProviderSettings()
    assert settings.config_dir == config_dir and settings.config_file == config_dir / "provider.toml"
    assert settings.models == ["smollm2-135m"] and settings.idle_timeout_mins == 60
    assert settings.engine is None and settings.schedule == Schedule() and settings.token is None
    assert {source for name, (_, source) in sources().items() if name != "config_dir"} == {"default"}


def test_the_documented_example_is_read_whole(config_dir: Path) -> None:
    """The example in docs/provider-config.md is the file a reader copies: it must work as shown."""
    example = re.search(r"## Example\s+```toml\n(.*?)```", DOC.read_text(), re.S)
    assert example is not None
    write(config_dir, example[1])
    settings = ProviderSettings()
    assert settings.coordinators == ["wss://coordinator.example.org/ws/provider"]
    assert (settings.models, settings.idle_timeout_mins, settings.slots, settings.threads,
            settings.engine, settings.heartbeat_interval_s) == (["smollm2-135m"], 60, 2, 8, "llama.cpp", 5)
    assert settings.schedule.enabled and len(settings.schedule.windows) == 2
    every_key = {f"{section}.{key}" for section, body in tomllib.loads(example[1]).items() for key in body}
    assert every_key == {"coordinator.url", "coordinator.heartbeat_interval_secs", "backend.models",
                         "backend.idle_timeout_mins", "backend.slots", "backend.threads",
                         "backend.engine", "schedule.enabled", "schedule.windows"}


def test_several_coordinators_from_the_file(config_dir: Path) -> None:
    write(config_dir, '[coordinator]\nurls = ["ws://a/ws/provider", "wss://b/ws/provider"]\n')
    assert ProviderSettings().coordinators == ["ws://a/ws/provider", "wss://b/ws/provider"]


def test_an_explicit_config_dir_is_where_the_file_is_read(config_dir: Path, tmp_path: Path) -> None:
    write(config_dir, "[backend]\nslots = 3\n")
    other = tmp_path / "other"
    write(other, "[backend]\nslots = 5\n")
    assert ProviderSettings().slots == 3
    assert ProviderSettings(config_dir=other).slots == 5
    assert ProviderSettings(config_dir=tmp_path / "empty").slots is None  # the engine chooses


# --- precedence and provenance -----------------------------------------------------------------

def test_precedence_defaults_file_env_flags(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(config_dir, '[backend]\nslots = 2\nmodels = ["from-file"]\nidle_timeout_mins = 0\n'
                             '[coordinator]\nurl = "ws://file/ws/provider"\n')
    assert sources()["slots"] == (2, f"file {file}")
    assert sources()["idle_timeout_mins"] == (0, f"file {file}")  # 0 is a value, not "unset"
    assert sources()["threads"] == (None, "default")
    monkeypatch.setenv("DARKBLOOM_PROVIDER_SLOTS", "3")
    monkeypatch.setenv("DARKBLOOM_PROVIDER_MODELS", '["from-env"]')
    assert sources()["slots"] == (3, "env DARKBLOOM_PROVIDER_SLOTS")
    assert sources()["models"] == (["from-env"], "env DARKBLOOM_PROVIDER_MODELS")
    assert sources()["coordinator_url"] == ("ws://file/ws/provider", f"file {file}")
    shown = sources({"slots": 4, "coordinator_urls": ["ws://flag/ws/provider"]})
    assert shown["slots"] == (4, "flag --slots")
    assert shown["coordinator_urls"] == (["ws://flag/ws/provider"], "flag --coordinator")
    assert shown["models"] == (["from-env"], "env DARKBLOOM_PROVIDER_MODELS")
    assert shown["config_dir"] == (str(config_dir), "env DARKBLOOM_PROVIDER_CONFIG_DIR")
    settings = ProviderSettings(slots=4)
    assert (settings.slots, settings.models, settings.idle_timeout_mins) == (4, ["from-env"], 0)


@pytest.mark.parametrize("stronger", ["env url", "env urls", "flag"])
def test_coordinators_from_env_or_flags_outrank_the_files_url_and_urls(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch, stronger: str) -> None:
    """`url` and `urls` are one setting: the file's `urls` (which would win over any `url`) must
    not beat DARKBLOOM_PROVIDER_COORDINATOR_URL."""
    write(config_dir, '[coordinator]\nurl = "ws://file-one/ws/provider"\n'
                      'urls = ["ws://file-a/ws/provider", "ws://file-b/ws/provider"]\n')
    assert ProviderSettings().coordinators == ["ws://file-a/ws/provider", "ws://file-b/ws/provider"]
    flags: dict[str, object] = {}
    if stronger == "env url":
        monkeypatch.setenv("DARKBLOOM_PROVIDER_COORDINATOR_URL", "ws://env/ws/provider")
    elif stronger == "env urls":
        monkeypatch.setenv("DARKBLOOM_PROVIDER_COORDINATOR_URLS", "ws://env/ws/provider")
    else:
        flags = {"coordinator_urls": ["ws://env/ws/provider"]}
    assert ProviderSettings(**flags).coordinators == ["ws://env/ws/provider"]  # type: ignore[arg-type]
    shown = sources(flags)
    assert "file" not in shown["coordinator_url"][1] and "file" not in shown["coordinator_urls"][1]


def test_the_shared_log_format_variable_is_named(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKBLOOM_LOG_FORMAT", "json")
    assert sources()["log_format"] == ("json", "env DARKBLOOM_LOG_FORMAT")
    monkeypatch.setenv("DARKBLOOM_PROVIDER_LOG_FORMAT", "text")
    assert sources()["log_format"] == ("text", "env DARKBLOOM_PROVIDER_LOG_FORMAT")


def test_a_schedule_from_the_environment_replaces_the_files(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(config_dir, '[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["mon"]\n'
                      'start = "22:00"\nend = "08:00"\n')
    assert ProviderSettings().schedule.windows[0].start == "22:00"
    monkeypatch.setenv("DARKBLOOM_PROVIDER_SCHEDULE", '{"enabled": false}')
    assert ProviderSettings().schedule == Schedule()  # not the file's windows with enabled off


def test_shown_values_hide_secrets(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKBLOOM_PROVIDER_TOKEN", TOKEN)
    write(config_dir, '[coordinator]\nurl = "wss://user:hunter2@c.example/ws/provider?key=s3cret"\n')
    settings, rows = effective_config()
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    shown = repr(rows)
    assert TOKEN not in shown and "hunter2" not in shown and "s3cret" not in shown
    assert sources()["token"] == ("set", "env DARKBLOOM_PROVIDER_TOKEN")
    assert sources()["coordinator_url"][0] == "wss://c.example/ws/provider"


def test_a_bad_variable_or_flag_is_named_without_its_value(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKBLOOM_PROVIDER_SLOTS", "many")
    with pytest.raises(ValidationError) as caught:
        ProviderSettings()
    assert settings_error(caught.value, {}).startswith("slots (env DARKBLOOM_PROVIDER_SLOTS): ")
    monkeypatch.delenv("DARKBLOOM_PROVIDER_SLOTS")
    flags = {"coordinator_urls": ["http://user:pw@h/"]}
    with pytest.raises(ValidationError) as caught:
        ProviderSettings(**flags)  # type: ignore[arg-type]
    line = settings_error(caught.value, flags)
    assert line.startswith("coordinator_urls (flag --coordinator): ") and "pw" not in line


# --- a file that cannot be used: one line, the file, the key, what is allowed ----------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("[backend\nslots = 2\n", "not valid TOML: "),
    ("[backend]\nslots = 2\nslots = 3\n", "not valid TOML: "),
    ('[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["mon"]\nstart = 22:00\n',
     'not valid TOML: Expected newline or end of document after a statement (at line 5, column 11); '
     'quote times: start = "22:00"'),
    ("[backnd]\nslots = 2\n", "unknown section [backnd] (allowed: [coordinator], [backend], [schedule])"),
    ("slots = 2\n", "unknown key slots at the top (allowed: [coordinator], [backend], [schedule])"),
    ("backend = 2\n", "backend must be a table"),
    ("[backend]\nmodles = []\n", "unknown key backend.modles (allowed in [backend]: models, "
                                 "idle_timeout_mins, slots, threads, engine, prefix_cache)"),
    ('[coordinator]\ntoken = "x"\n', "unknown key coordinator.token (allowed in [coordinator]: url, urls, "
                                     "heartbeat_interval_secs)"),
    ('[backend]\nslots = "two"\n', "backend.slots: Input should be a valid integer (got text)"),
    ('[backend]\nslots = "2"\n', "backend.slots: Input should be a valid integer (got text)"),
    ("[backend]\nslots = true\n", "backend.slots: Input should be a valid integer (got true/false)"),
    ("[backend]\nslots = 0\n", "backend.slots: Input should be greater than or equal to 1"),
    ("[backend]\nidle_timeout_mins = -5\n", "backend.idle_timeout_mins: Input should be greater than or "
                                            "equal to 0"),
    ("[backend]\nidle_timeout_mins = 1.5\n", "backend.idle_timeout_mins: Input should be a valid integer"),
    ('[backend]\nengine = "ollama"\n', "backend.engine: Input should be 'llama.cpp', 'mlx-lm' or 'vllm'"),
    ("[backend]\nmodels = []\n", "backend.models: List should have at least 1 item"),
    ('[backend]\nmodels = "smollm2-135m"\n', "backend.models: Input should be a valid list (got text)"),
    ('[backend]\nmodels = ["a", 3]\n', "backend.models #2: Input should be a valid string"),
    ("[coordinator]\nheartbeat_interval_secs = 0\n", "coordinator.heartbeat_interval_secs: Input should be "
                                                     "greater than 0"),
    ('[coordinator]\nurl = 5\n', "coordinator.url: Input should be a valid string (got a whole number)"),
    ('[coordinator]\nurls = ["http://h/"]\n', "coordinator.urls: each coordinator URL must be ws:// or wss://"),
    ("[schedule]\nenabled = true\n", "schedule: enabled, but there are no windows: add [[schedule.windows]]"),
    ('[schedule]\nenabled = "yes"\n', "schedule.enabled: Input should be a valid boolean (got text)"),
    ('[schedule]\nenabled = true\nwindows = 3\n', "schedule.windows: Input should be a valid list"),
    ('[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["mon"]\nstart = "25:00"\nend = "08:00"\n',
     "schedule.windows #1.start: '25:00' is not a time: use HH:MM on a 24-hour clock"),
    ('[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["mon"]\nstart = "22:00"\nend = "08:00"\n'
     '[[schedule.windows]]\ndays = ["funday"]\nstart = "22:00"\nend = "08:00"\n',
     "schedule.windows #2.days #1: Input should be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'"),
    ('[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["mon"]\nstrat = "22:00"\nend = "08:00"\n',
     "unknown key schedule.windows #1.strat"),
    ('[schedule]\nenable = true\n', "unknown key schedule.enable"),
])
def test_bad_files_are_one_clear_line(config_dir: Path, text: str, expected: str) -> None:
    path = write(config_dir, text)
    with pytest.raises(ProviderConfigError) as caught:
        ProviderSettings()
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message


def test_a_bad_url_in_the_file_is_not_echoed(config_dir: Path) -> None:
    write(config_dir, '[coordinator]\nurls = ["http://user:hunter2@h/ws"]\n')
    with pytest.raises(ProviderConfigError) as caught:
        ProviderSettings()
    assert "hunter2" not in str(caught.value)


def test_huge_binary_and_odd_files_are_refused(config_dir: Path) -> None:
    path = write(config_dir, "# " + "x" * config_files.MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ProviderConfigError, match="too large for a config file"):
        ProviderSettings()
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ProviderConfigError, match="not UTF-8 text"):
        ProviderSettings()
    path.write_bytes(b"[backend]\x00\n")
    with pytest.raises(ProviderConfigError, match="binary data"):
        ProviderSettings()
    path.unlink()
    path.mkdir()
    with pytest.raises(ProviderConfigError, match="is a directory"):
        ProviderSettings()


@pytest.mark.timeout(20)
def test_devices_and_fifos_are_refused_without_blocking(config_dir: Path) -> None:
    config_dir.mkdir(parents=True)
    path = config_dir / "provider.toml"
    path.symlink_to("/dev/zero")
    with pytest.raises(ProviderConfigError, match="not a regular file"):
        read_provider_file(path)
    path.unlink()
    os.mkfifo(path)  # nobody writes: a blocking open would wait forever
    with pytest.raises(ProviderConfigError, match="not a regular file"):
        ProviderSettings()


def test_an_unreadable_file_is_one_line(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file this user may not read (made so by refusing the open: CI runs as root, who reads
    any file whatever its mode)."""
    path = write(config_dir, "[backend]\nslots = 2\n")
    real_open = os.open

    def refuse(name: str | os.PathLike[str], flags: int, *args: int) -> int:
        if Path(name) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(name, flags, *args)

    monkeypatch.setattr("darkbloom.textfile.os.open", refuse)
    with pytest.raises(ProviderConfigError, match="cannot read the config file") as refused:
        ProviderSettings()
    assert "\n" not in str(refused.value)


# --- the token file ----------------------------------------------------------------------------

def test_save_token_is_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # even with nothing masked, nobody else can read it
    try:
        path = save_token(tmp_path / "new" / "dir", TOKEN)
    finally:
        os.umask(old)
    assert path == tmp_path / "new" / "dir" / "token"
    assert path.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_save_token_replaces_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    save_token(tmp_path, TOKEN)
    (tmp_path / "token").chmod(0o644)  # an older, careless copy
    other = "darkbloom-pt-" + "cd" * 32
    save_token(tmp_path, other)
    assert read_token(tmp_path) == other
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


@pytest.mark.parametrize("bad", ["", "two words", "line\nbreak", "x" * 2000, "darkbloom-pt-é"])
def test_save_token_refuses_what_is_not_a_token(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        save_token(tmp_path, bad)
    assert not (tmp_path / "token").exists()


def test_forget_token(tmp_path: Path) -> None:
    save_token(tmp_path, TOKEN)
    assert forget_token(tmp_path) is True
    assert not (tmp_path / "token").exists() and read_token(tmp_path) is None
    assert forget_token(tmp_path) is False


def test_the_token_comes_from_flag_then_env_then_file(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = save_token(config_dir, TOKEN)
    settings = ProviderSettings()
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert sources()["token"] == ("set", f"file {token_file}")
    monkeypatch.setenv("DARKBLOOM_PROVIDER_TOKEN", "darkbloom-pt-env")
    assert ProviderSettings().token.get_secret_value() == "darkbloom-pt-env"  # type: ignore[union-attr]
    assert sources()["token"] == ("set", "env DARKBLOOM_PROVIDER_TOKEN")
    assert ProviderSettings(token="darkbloom-pt-flag").token.get_secret_value() == "darkbloom-pt-flag"  # type: ignore[arg-type,union-attr]
    monkeypatch.delenv("DARKBLOOM_PROVIDER_TOKEN")
    forget_token(config_dir)
    assert ProviderSettings().token is None and sources()["token"] == (None, "default")


def test_a_damaged_token_file_is_one_line_without_its_content(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir.mkdir(parents=True)
    (config_dir / "token").write_text("darkbloom-pt-half written\n")
    with pytest.raises(ProviderConfigError, match="does not hold a provider token") as caught:
        ProviderSettings()
    assert "half" not in str(caught.value)
    monkeypatch.setenv("DARKBLOOM_PROVIDER_TOKEN", TOKEN)  # given elsewhere: the file is not read
    assert ProviderSettings().token is not None
    monkeypatch.delenv("DARKBLOOM_PROVIDER_TOKEN")
    (config_dir / "token").write_text("\n")  # empty: no token, not an error
    assert ProviderSettings().token is None
