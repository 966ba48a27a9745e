"""`darkbloom config show|path` as operators run it: a real `python -m darkbloom` process with its
own config dir, environment and flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import darkbloom
from darkbloom.provider.config_files import save_token

TOKEN = "darkbloom-pt-" + "5e" * 32


def darkbloom_cli(*args: str, config_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items()
             if not name.upper().startswith("DARKBLOOM_")}
    clean.update(PYTHONPATH=str(Path(darkbloom.__file__).parents[1]), COLUMNS="250",
                 DARKBLOOM_PROVIDER_CONFIG_DIR=str(config_dir), **env)
    return subprocess.run([sys.executable, "-m", "darkbloom", *args], env=clean, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "provider.toml").write_text(
        '[coordinator]\nurl = "wss://ana:hunter2@coord.example/ws/provider"\n'
        '[backend]\nmodels = ["from-file"]\nslots = 2\nidle_timeout_mins = 15\n'
        '[schedule]\nenabled = true\n[[schedule.windows]]\ndays = ["sun"]\nstart = "22:00"\nend = "08:00"\n')
    save_token(directory, TOKEN)
    return directory


def test_show_json_says_where_each_value_came_from(config_dir: Path) -> None:
    done = darkbloom_cli("config", "show", "--json", "--model", "from-flag", config_dir=config_dir,
                         DARKBLOOM_PROVIDER_SLOTS="6", DARKBLOOM_PROVIDER_ENGINE="vllm")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    file = f"file {config_dir / 'provider.toml'}"
    assert shown["config_file"] == str(config_dir / "provider.toml") and shown["config_file_exists"]
    settings = shown["settings"]
    assert settings["models"] == {"value": ["from-flag"], "source": "flag --model", "key": "backend.models"}
    assert settings["slots"] == {"value": 6, "source": "env DARKBLOOM_PROVIDER_SLOTS", "key": "backend.slots"}
    assert settings["engine"]["value"] == "vllm"
    assert settings["idle_timeout_mins"] == {"value": 15, "source": file, "key": "backend.idle_timeout_mins"}
    assert settings["schedule"]["source"] == file
    assert settings["schedule"]["value"]["windows"] == [{"days": ["sun"], "start": "22:00", "end": "08:00"}]
    assert settings["threads"] == {"value": None, "source": "default", "key": "backend.threads"}
    assert settings["token"] == {"value": "set", "source": f"file {config_dir / 'token'}", "key": None}
    assert settings["coordinator_url"]["value"] == "wss://coord.example/ws/provider"
    assert TOKEN not in done.stdout + done.stderr and "hunter2" not in done.stdout + done.stderr


def test_show_for_people_is_a_table_without_secrets(config_dir: Path) -> None:
    done = darkbloom_cli("config", "show", config_dir=config_dir, DARKBLOOM_PROVIDER_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:4]]
            for line in done.stdout.splitlines() if line.count("│") == 4}
    assert rows["backend.slots"] == ["2", f"file {config_dir / 'provider.toml'}"]
    assert rows["token"] == ["set", "env DARKBLOOM_PROVIDER_TOKEN"]
    assert rows["schedule"] == ["sun 22:00-08:00", f"file {config_dir / 'provider.toml'}"]
    assert rows["backend.threads"] == ["auto", "default"]
    assert TOKEN not in done.stdout and "hunter2" not in done.stdout


@pytest.mark.parametrize("command", [["config", "show"], ["config", "show", "--json"], ["identity", "csr"]])
def test_a_bad_file_is_one_line_and_exit_2_from_any_command(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "provider.toml").write_text("[backend]\nslots = 0\n")
    done = darkbloom_cli(*command, config_dir=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"{tmp_path / 'provider.toml'}: backend.slots: Input should be greater than " \
                          "or equal to 1\n"
    assert done.stdout == "" and not (tmp_path / "identity.pem").exists()


def test_a_bad_variable_is_one_line_naming_it(tmp_path: Path) -> None:
    done = darkbloom_cli("config", "show", config_dir=tmp_path, DARKBLOOM_PROVIDER_IDLE_TIMEOUT_MINS="-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("idle_timeout_mins (env DARKBLOOM_PROVIDER_IDLE_TIMEOUT_MINS): ")
    assert done.stderr.count("\n") == 1


def test_path_prints_where_the_file_is_looked_for(tmp_path: Path) -> None:
    done = darkbloom_cli("config", "path", config_dir=tmp_path / "nowhere")
    assert (done.returncode, done.stdout) == (0, f"{tmp_path / 'nowhere' / 'provider.toml'}\n")


@pytest.mark.parametrize("command", [["config", "show"], ["identity", "csr"]])
def test_a_variable_that_is_not_json_is_one_line(tmp_path: Path, command: list[str]) -> None:
    done = darkbloom_cli(*command, config_dir=tmp_path, DARKBLOOM_PROVIDER_MODELS="a,b")
    assert done.returncode == 2
    assert done.stderr == "models (env DARKBLOOM_PROVIDER_MODELS): not JSON; this variable takes " \
                          """JSON, e.g. '["smollm2-135m"]'\n"""
