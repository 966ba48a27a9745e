"""The provider commands in a real terminal (tmux) against a real coordinator: `login` shows a
code that a signed-up user approves, Ctrl-C leaves no traceback, and `start` → `logs` → `stop`
runs a real provider that registers and leaves again.

The login tests need the coordinator's device-code routes (api.md §6) and the provider token on
/v1/provider/account-earnings."""

from __future__ import annotations

import re
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from darkbloom.cli import daemon
from darkbloom.inference.catalog import WHISPER_TINY_EN
from tests.e2e.harness import MODEL, Coordinator
from tests.e2e.terminal import Terminal
from tests.e2e.test_provider_daemon_cli import cli_env, darkbloom

USER_CODE = r"\b([ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4}-[ABCDEFGHJKMNPQRSTUVWXYZ23456789]{4})\b"


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    started = Coordinator(workdir).start()
    try:
        yield started
    finally:
        started.stop()


def _signup(coordinator: Coordinator) -> tuple[str, str]:
    answer = httpx.post(f"{coordinator.base_url}/v1/auth/signup", timeout=10, json={
        "email": f"op-{secrets.token_hex(4)}@example.com", "password": "correct horse battery"})
    assert answer.status_code == 201, answer.text
    return answer.json()["account_id"], answer.json()["session_token"]


def test_login_in_a_terminal(tmp_path: Path, coordinator: Coordinator) -> None:
    env = cli_env(tmp_path, DARKBLOOM_PROVIDER_COORDINATOR_URL=coordinator.ws_url)
    config_dir = tmp_path / "cfg"
    with Terminal(env) as term:
        term.run("login")
        user_code = term.wait_for(USER_CODE).group(1)
        assert "/link" in term.screen()
        assert not (config_dir / "token").exists()
        account_id, session = _signup(coordinator)
        approved = httpx.post(f"{coordinator.base_url}/v1/device/approve", timeout=10,
                              json={"user_code": user_code.lower()},  # case-insensitive
                              headers={"Authorization": f"Bearer {session}"})
        assert approved.status_code == 200, approved.text
        assert term.wait_exit(60) == 0, term.screen()
        screen = term.screen()
    assert f"linked to account {account_id}" in screen
    assert "Traceback" not in screen
    token_file = config_dir / "token"
    token = token_file.read_text()
    assert re.fullmatch(r"darkbloom-pt-[0-9a-f]{64}\n", token)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700

    # The stored token is this machine's credential: earnings read with it, for that account.
    done = darkbloom(env, "earnings", "--json")
    assert done.returncode == 0, done.stderr
    assert '"account_id": "' + account_id + '"' in done.stdout
    done = darkbloom(env, "earnings")
    assert done.returncode == 0 and "Balance" in done.stdout and "$0.000000" in done.stdout

    # Revoked: one line saying to log in again.
    revoked = subprocess.run([sys.executable, "-m", "darkbloom", "admin", "provider-token", "revoke",
                              token.strip()], env=coordinator.env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert revoked.returncode == 0, revoked.stderr
    done = darkbloom(env, "earnings")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "the coordinator refused this machine's provider token (revoked?): run `darkbloom login` again"]


def test_ctrl_c_during_login(tmp_path: Path, coordinator: Coordinator) -> None:
    env = cli_env(tmp_path, DARKBLOOM_PROVIDER_COORDINATOR_URL=coordinator.ws_url)
    with Terminal(env) as term:
        term.run("login")
        term.wait_for(USER_CODE)
        term.keys("C-c")
        assert term.wait_exit(30) == 130
        screen = term.screen()
    assert "login cancelled: nothing was stored" in screen
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
    assert not (tmp_path / "cfg" / "token").exists()


def _daemon_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_logs_stop_in_a_terminal(tmp_path: Path, coordinator: Coordinator) -> None:
    """`start` without --model asks which installed models to serve (those that fit); the real
    provider it starts in the background (the pidfile path: no systemd here) registers with the
    coordinator; `logs -n 5` shows its last 5 log lines; `stop` ends it and it leaves."""
    env = cli_env(tmp_path, DARKBLOOM_PROVIDER_COORDINATOR_URL=coordinator.ws_url,
                  DARKBLOOM_PROVIDER_TOKEN=coordinator.provider_token)
    config_dir = tmp_path / "cfg"
    pid = None
    try:
        with Terminal(env) as term:
            term.run("start")
            # Both wheel-shipped models are installed and fit: the text model, and Whisper.
            term.wait_for(r"Pick numbers, e\.g\. 1 3 \[1-2\]")
            assert MODEL in term.screen() and WHISPER_TINY_EN.id in term.screen()
            term.type("1")
            assert term.wait_exit(120) == 0, term.screen()
            pid = int(term.wait_for(r"started in the background, pid (\d+)").group(1))
            assert daemon.read_pid(daemon.pidfile_path(config_dir)) == pid
            command = psutil.Process(pid).cmdline()
            assert daemon.CHILD_MODULE in command and command[-2:] == ["--model", MODEL]
            coordinator.wait_providers(1, timeout=120)  # it registered
            log = daemon.log_path(config_dir)
            assert "registered as" in log.read_text()

            term.run("logs -n 5")
            status, output = term.wait_done(30)
            assert status == 0
            shown = output.splitlines()
            assert 1 <= len(shown) <= 5
            log_lines = log.read_text().splitlines()
            assert all(line in log_lines for line in shown), shown

            term.run("stop")
            assert term.wait_done(30) == (0, f"stopped: provider pid {pid}\n")
            assert _daemon_gone(pid)
            assert not daemon.pidfile_path(config_dir).exists()
            coordinator.wait_providers(0, timeout=60)

            term.run("stop")
            assert term.wait_done(30) == (0, "no provider is running\n")
            assert "Traceback" not in term.screen()
    finally:
        if pid is not None and not _daemon_gone(pid):
            psutil.Process(pid).kill()
