"""The background daemon's pieces: pidfile trust, stop's escalation (on a clock the test moves),
the systemd unit's text, the rotating log wrapper."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkbloom.cli import daemon


def _spawn(code: str, *extra: str) -> subprocess.Popen[str]:
    """A Python process that prints "ready" once set up; ``extra`` argv words follow the code."""
    return subprocess.Popen([sys.executable, "-c", code, *extra], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def _start(procs: list[subprocess.Popen[str]], code: str, *extra: str) -> subprocess.Popen[str]:
    proc = _spawn(code, *extra)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_read_pid_refuses_what_is_not_a_pid(tmp_path: Path) -> None:
    pidfile = tmp_path / "provider.pid"
    assert daemon.read_pid(pidfile) is None
    for text in ("", "abc", "-5", "0", "12 34", "9" * 40):
        pidfile.write_text(text)
        assert daemon.read_pid(pidfile) is None, text
    daemon.write_pid(pidfile, 4321)
    assert pidfile.read_text() == "4321\n" and daemon.read_pid(pidfile) == 4321


def test_nothing_running(tmp_path: Path) -> None:
    assert daemon.stop_pidfile_daemon(tmp_path) == daemon.StopResult(None)


def test_a_dead_pid_is_removed_without_signalling(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    daemon.write_pid(daemon.pidfile_path(tmp_path), int(done.stdout))
    assert daemon.stop_pidfile_daemon(tmp_path) == daemon.StopResult(None, stale=True)
    assert not daemon.pidfile_path(tmp_path).exists()


def test_a_live_process_that_is_not_ours_is_left_alone(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    stranger = _start(procs, SLEEPER)  # alive, but its command line is not the daemon's
    daemon.write_pid(daemon.pidfile_path(tmp_path), stranger.pid)
    assert not daemon.is_our_daemon(stranger.pid)
    assert daemon.stop_pidfile_daemon(tmp_path) == daemon.StopResult(None, stale=True)
    assert stranger.poll() is None
    assert not daemon.pidfile_path(tmp_path).exists()


def test_sigterm_stops_our_daemon(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    ours = _start(procs, SLEEPER, daemon.CHILD_MODULE)
    daemon.write_pid(daemon.pidfile_path(tmp_path), ours.pid)
    assert daemon.running_pid(tmp_path) == ours.pid
    result = daemon.stop_pidfile_daemon(tmp_path)
    assert result == daemon.StopResult(ours.pid, killed=False)
    assert ours.wait(5) == -signal.SIGTERM
    assert not daemon.pidfile_path(tmp_path).exists()


def test_sigkill_after_the_grace_period(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """A daemon that ignores SIGTERM is killed once the grace period has passed on the clock."""
    stubborn = _start(procs, STUBBORN, daemon.CHILD_MODULE)
    daemon.write_pid(daemon.pidfile_path(tmp_path), stubborn.pid)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        os.sched_yield()

    result = daemon.stop_pidfile_daemon(tmp_path, grace_s=10.0, clock=lambda: now[0], sleep=sleep)
    assert result == daemon.StopResult(stubborn.pid, killed=True)
    assert stubborn.wait(5) == -signal.SIGKILL
    assert now[0] >= 10.0  # not before the grace period had passed
    assert not daemon.pidfile_path(tmp_path).exists()


def test_a_zombie_counts_as_gone(procs: list[subprocess.Popen[str]]) -> None:
    ours = _start(procs, SLEEPER, daemon.CHILD_MODULE)
    assert daemon.is_our_daemon(ours.pid)
    os.kill(ours.pid, signal.SIGKILL)
    os.waitid(os.P_PID, ours.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert not daemon.is_our_daemon(ours.pid)


def test_since_last_start() -> None:
    lines = ["old", f"{daemon.START_MARK} 1", "a", f"{daemon.START_MARK} 2", "b", "c"]
    assert daemon.since_last_start(lines) == ["b", "c"]
    assert daemon.since_last_start(["x", "y"]) == ["x", "y"]


def test_unit_text(tmp_path: Path) -> None:
    config_dir = tmp_path / "odd dir"
    args = ["--model", "smollm2-135m", "--coordinator", "wss://c.example/ws/provider?x=100%"]
    text = daemon.unit_text(config_dir, args)
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    exec_start = fields["ExecStart"]
    # systemd's quoting is the shell's double quotes, with % (specifiers) doubled
    assert shlex.split(exec_start.replace("%%", "%")) == daemon.child_command(config_dir, args)
    assert "100%%" in exec_start
    assert daemon.CHILD_MODULE in exec_start and str(daemon.log_path(config_dir)) in exec_start
    # systemd takes the rest of the line as the path: unquoted (a quoted one "is not absolute")
    assert fields["EnvironmentFile"] == f"-{config_dir / daemon.ENV_FILE}"
    assert fields["Restart"] == "on-failure"
    assert fields["WantedBy"] == "default.target"
    assert fields["TimeoutStopSec"] == "10"


def test_env_file_passes_provider_settings_only() -> None:
    text = daemon.env_file_text({"DARKBLOOM_PROVIDER_TOKEN": 'darkbloom-pt-"x"',
                                 "DARKBLOOM_PROVIDER_CONFIG_DIR": "/home/a/cfg",
                                 "DARKBLOOM_ADMIN_KEY": "secret", "HOME": "/home/a",
                                 "DARKBLOOM_PROVIDER_BAD": "two\nlines"})
    assert text == ('DARKBLOOM_PROVIDER_CONFIG_DIR="/home/a/cfg"\n'
                    'DARKBLOOM_PROVIDER_TOKEN="darkbloom-pt-\\"x\\""\n')


def test_systemd_absent_here_means_the_pidfile_path() -> None:
    """This machine (a container) has no systemd user manager: `start` takes the pidfile path."""
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here")
    assert daemon.systemd_user_available() is False


def test_background_log_rotates_and_takes_stdout_along(tmp_path: Path) -> None:
    """Records and raw writes to fds 1 and 2 all land in the current file, which rotates at its
    size bound: at most 1 + backups files, each near the bound."""
    log = tmp_path / "provider.log"
    code = textwrap.dedent(f"""
        import logging, os
        from pathlib import Path
        from darkbloom.cli.background import install_log
        install_log(Path({str(log)!r}), max_bytes=2000, backups=2)
        logging.getLogger().setLevel("INFO")
        for i in range(200):
            logging.getLogger("t").info("record %d %s", i, "x" * 40)
        os.write(1, b"raw stdout after rotation\\n")
        os.write(2, b"raw stderr after rotation\\n")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["provider.log", "provider.log.1", "provider.log.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2000
    current = log.read_text()
    assert "record 199" in current
    assert current.endswith("raw stdout after rotation\nraw stderr after rotation\n")


def test_control_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    probe = textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({str(tmp_path / "provider.lock")!r}, os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("free")
        except BlockingIOError:
            print("held")
    """)

    def probe_lock() -> str:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    with daemon.control_lock(tmp_path):
        assert probe_lock() == "held"
    assert probe_lock() == "free"
