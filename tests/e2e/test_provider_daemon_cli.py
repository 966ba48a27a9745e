"""The provider operator commands as an operator runs them (`python -m darkbloom ...` processes):
help with an example, one-line errors, stale pidfiles. The terminal tests are in
test_provider_terminal.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darkbloom.cli import daemon


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A provider environment of the test's own: config dir, HOME (so no user config is read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKBLOOM_PROVIDER_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "DARKBLOOM_PROVIDER_CONFIG_DIR": str(home / "cfg"), "COLUMNS": "140"})
    env.update(extra)
    return env


def darkbloom(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "darkbloom", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("command", ["start", "stop", "logs", "login", "logout", "earnings"])
def test_help_has_an_example(tmp_path: Path, command: str) -> None:
    done = darkbloom(cli_env(tmp_path), command, "--help")
    assert done.returncode == 0
    assert f"Example: darkbloom {command}" in done.stdout


def test_stop_when_nothing_runs(tmp_path: Path) -> None:
    done = darkbloom(cli_env(tmp_path), "stop")
    assert done.returncode == 0 and done.stdout.strip() == "no provider is running"


def test_stop_removes_a_stale_pidfile_without_killing(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    pidfile = daemon.pidfile_path(tmp_path / "cfg")
    pidfile.parent.mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (stranger.pid, 2**22 + 12345):  # alive but not ours; no such process
            pidfile.write_text(f"{pid}\n")
            done = darkbloom(env, "stop")
            assert done.returncode == 0, done.stderr
            assert "removed a stale pidfile" in done.stdout
            assert not pidfile.exists()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_logs_without_a_log(tmp_path: Path) -> None:
    assert_one_line_error(darkbloom(cli_env(tmp_path), "logs"), "no provider log", "darkbloom start")


def test_logs_shows_the_last_lines(tmp_path: Path) -> None:
    log = daemon.log_path(tmp_path / "cfg")
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    done = darkbloom(cli_env(tmp_path), "logs", "-n", "3")
    assert done.returncode == 0 and done.stdout == "line 97\nline 98\nline 99\n"


def test_earnings_logged_out(tmp_path: Path) -> None:
    assert_one_line_error(darkbloom(cli_env(tmp_path), "earnings"), "not logged in", "darkbloom login")


def test_login_with_no_coordinator_there(tmp_path: Path) -> None:
    done = darkbloom(cli_env(tmp_path), "login", "--coordinator", "ws://127.0.0.1:9/ws/provider")
    assert_one_line_error(done, "cannot reach the coordinator at http://127.0.0.1:9")
    assert not (tmp_path / "cfg" / "token").exists()


def test_login_with_a_bad_url(tmp_path: Path) -> None:
    assert_one_line_error(darkbloom(cli_env(tmp_path), "login", "--coordinator", "ftp://x"),
                          "not a coordinator URL")


def test_logout(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "token").write_text("darkbloom-pt-" + "a" * 64 + "\n")
    assert "logged out" in darkbloom(env, "logout").stdout
    assert not (tmp_path / "cfg" / "token").exists()
    assert "not logged in" in darkbloom(env, "logout").stdout


def test_start_that_dies_at_once_shows_why(tmp_path: Path) -> None:
    """A daemon that exits at once (here: a model not in the catalog) is reported with the end of
    its log, and no pidfile is left behind."""
    done = darkbloom(cli_env(tmp_path), "start", "--model", "no-such-model",
                     "--coordinator", "ws://127.0.0.1:9/ws/provider")
    assert done.returncode == 1
    assert "exited at once" in done.stderr
    assert "no-such-model" in done.stderr and "not installed here" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not daemon.pidfile_path(tmp_path / "cfg").exists()
