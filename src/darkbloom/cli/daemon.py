"""The background provider (`darkbloom start` / `stop`): a detached `darkbloom serve` with a
pidfile, or a systemd user unit where a systemd user manager answers.

The pidfile is only trusted for a live process whose command line is ours: a pid left by a crash
may since belong to anything, and `stop` must never kill a stranger.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from darkbloom.provider.config_files import make_private_dir

PIDFILE = "provider.pid"
LOGFILE = "provider.log"
UNIT_NAME = "darkbloom-provider.service"
ENV_FILE = "provider.env"
# The detached child runs this module; its command line is how `stop` recognises it.
CHILD_MODULE = "darkbloom.cli.background"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
STOP_GRACE_S = 10.0
START_MARK = "=== darkbloom start"
# Environment the background provider needs from the shell that started it (systemd starts units
# with a bare environment): its settings, and the Python path when running from a checkout.
_PASSED_ENV_PREFIXES = ("DARKBLOOM_PROVIDER_", "DARKBLOOM_LOG_FORMAT", "PYTHONPATH", "HF_", "LLAMA_")


@contextmanager
def control_lock(config_dir: Path) -> Iterator[None]:
    """Held by `start` and `stop` while they work: two `start`s at once would otherwise both stop
    nothing and leave two providers, one of them out of the pidfile's sight. A second one waits."""
    import fcntl

    make_private_dir(config_dir)
    fd = os.open(config_dir / "provider.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def pidfile_path(config_dir: Path) -> Path:
    return config_dir / PIDFILE


def log_path(config_dir: Path) -> Path:
    return config_dir / LOGFILE


def child_command(config_dir: Path, serve_args: Sequence[str]) -> list[str]:
    """The background provider's argv: `darkbloom serve ...` under the log-file wrapper."""
    return [sys.executable, "-m", CHILD_MODULE, "--log-file", str(log_path(config_dir)),
            "serve", *serve_args]


def is_our_daemon(pid: int) -> bool:
    """A live (not zombie) process running the background provider."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return CHILD_MODULE in proc.cmdline()
    except (psutil.Error, OSError):  # gone, or not ours to look at
        return False


def read_pid(pidfile: Path) -> int | None:
    """The pid written there, or None for a missing, unreadable or garbled file (bytes, not text:
    a pidfile that is not UTF-8 is as stale as one naming a dead process)."""
    try:
        with pidfile.open("rb") as f:
            raw = f.read(32).strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**31 else None


def write_pid(pidfile: Path, pid: int) -> None:
    """Atomically: a concurrent `stop` reads the old pid or the new one, never half a number."""
    tmp = pidfile.with_name(f".{pidfile.name}.{os.getpid()}")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, pidfile)


def running_pid(config_dir: Path) -> int | None:
    """The background provider's pid when the pidfile names a live one of ours."""
    pid = read_pid(pidfile_path(config_dir))
    return pid if pid is not None and is_our_daemon(pid) else None


@dataclass(frozen=True, slots=True)
class StopResult:
    pid: int | None  # the process signalled, if any
    killed: bool = False  # it needed SIGKILL
    stale: bool = False  # a pidfile was there for a dead or foreign pid (removed, nothing signalled)


def stop_pidfile_daemon(config_dir: Path, grace_s: float = STOP_GRACE_S,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> StopResult:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; the pidfile is removed in every case."""
    pidfile = pidfile_path(config_dir)
    pid = read_pid(pidfile)
    if pid is None:
        existed = pidfile.exists()
        pidfile.unlink(missing_ok=True)
        return StopResult(None, stale=existed)
    if not is_our_daemon(pid):
        pidfile.unlink(missing_ok=True)
        return StopResult(None, stale=True)
    killed = False
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = clock() + grace_s
        while is_our_daemon(pid) and clock() < deadline:
            sleep(0.1)
        if is_our_daemon(pid):
            os.kill(pid, signal.SIGKILL)
            killed = True
            deadline = clock() + 5.0  # SIGKILL cannot be refused, but a process stuck in the
            while is_our_daemon(pid) and clock() < deadline:  # kernel (D state) dies late
                sleep(0.05)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return StopResult(pid, killed=killed)


def mark_start(log: Path) -> None:
    """A line where this run's output begins, so `start` can show only this run's last words."""
    with log.open("a", encoding="utf-8") as f:
        f.write(f"{START_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")


def since_last_start(lines: Sequence[str]) -> list[str]:
    """The lines after the last start mark (all of them when none is among them)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(START_MARK):
            return list(lines[i + 1:])
    return list(lines)


def spawn_detached(config_dir: Path, serve_args: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start the provider in its own session (a closed terminal or Ctrl-C in it leaves it be),
    output to the rotating log, pid in the pidfile."""
    make_private_dir(config_dir)
    mark_start(log_path(config_dir))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(child_command(config_dir, serve_args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True, close_fds=True)
    write_pid(pidfile_path(config_dir), proc.pid)
    return proc


def survives(proc: subprocess.Popen[bytes], check_s: float,
             sleep: Callable[[float], None] = time.sleep) -> bool:
    """Whether the child is still running after ``check_s`` (a bad flag or a missing model makes
    it exit at once; this is what `start` waits for before saying it started)."""
    waited = 0.0
    while waited < check_s:
        if proc.poll() is not None:
            return False
        sleep(0.1)
        waited += 0.1
    return proc.poll() is None


# --- systemd user unit ------------------------------------------------------------------------


def _systemctl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def systemd_user_available() -> bool:
    """A systemd user manager answers (Linux desktops and servers with lingering; not containers
    or CI, whose `systemctl --user` fails to reach a bus)."""
    if not sys.platform.startswith("linux") or shutil.which("systemctl") is None:
        return False
    if not Path("/run/systemd/system").is_dir():  # systemd is not PID 1 here
        return False
    try:
        state = _systemctl("is-system-running", timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return state in ("running", "degraded", "starting")


def unit_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "systemd" / "user" / UNIT_NAME


class UnitError(ValueError):
    """The unit cannot say this command line or path (one line for the operator)."""


def _unit_safe(text: str, what: str) -> str:
    """A unit file is line-based and knows no escape for a line break in every setting: an
    argument holding a newline (or any control character) could add directives, so it is refused
    rather than quoted."""
    if not text.isprintable():
        raise UnitError(f"the {what} holds a control character; a systemd unit cannot carry it")
    return text


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: double-quoted with C escapes, and `%` doubled (systemd specifiers)."""
    _unit_safe(arg, "command line")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _environment_file(path: Path) -> str:
    """EnvironmentFile='s value: systemd takes the rest of the line verbatim as the path (quotes
    would be part of it, and a quoted path "is not absolute" and is ignored), expanding only `%`
    specifiers; so no quotes and `%` doubled. Spaces inside are fine, control characters are
    refused, and so is a relative path (the unit would look for it from / )."""
    text = _unit_safe(str(path), "config dir path")
    if not path.is_absolute():
        raise UnitError(f"the config dir {text!r} must be an absolute path for the systemd unit: "
                        "set DARKBLOOM_PROVIDER_CONFIG_DIR to one")
    return text.replace("%", "%%")


def unit_text(config_dir: Path, serve_args: Sequence[str]) -> str:
    """The user unit: restarts on failure, starts at login once enabled; its settings come from an
    environment file beside the token (mode 0600: it may hold DARKBLOOM_PROVIDER_TOKEN). UnitError
    when an argument or the config dir cannot be written into a unit."""
    command = " ".join(_systemd_quote(arg) for arg in child_command(config_dir, serve_args))
    env_file = _environment_file(config_dir / ENV_FILE)
    return ("[Unit]\n"
            "Description=darkbloom provider (private AI inference)\n"
            "After=network-online.target\n"
            "Wants=network-online.target\n\n"
            "[Service]\n"
            "Type=simple\n"
            f"EnvironmentFile=-{env_file}\n"
            "Environment=PYTHONUNBUFFERED=1\n"
            f"ExecStart={command}\n"
            "KillSignal=SIGTERM\n"
            f"TimeoutStopSec={int(STOP_GRACE_S)}\n"
            "Restart=on-failure\n"
            "RestartSec=5\n\n"
            "[Install]\n"
            "WantedBy=default.target\n")


def env_file_text(environ: Mapping[str, str]) -> str:
    """The shell's provider settings for the unit (systemd's EnvironmentFile syntax)."""
    lines = []
    for name in sorted(environ):
        value = environ[name]
        if name.startswith(_PASSED_ENV_PREFIXES) and value.isprintable():
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name}="{escaped}"')
    return "".join(f"{line}\n" for line in lines)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def install_unit(config_dir: Path, serve_args: Sequence[str]) -> None:
    """Write the unit and its environment file, then (re)start it and enable it for next login.
    UnitError (before anything is written) when the unit cannot say the command line."""
    text = unit_text(config_dir, serve_args)
    make_private_dir(config_dir)
    mark_start(log_path(config_dir))
    _write_private(config_dir / ENV_FILE, env_file_text(os.environ))
    path = unit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for args in (("daemon-reload",), ("enable", UNIT_NAME), ("restart", UNIT_NAME)):
        done = _systemctl(*args)
        if done.returncode != 0:
            raise RuntimeError(f"systemctl --user {shlex.join(args)} failed: "
                               f"{(done.stderr or done.stdout).strip()[:300]}")


def unit_state() -> str:
    """`systemctl --user is-active`: "active" when running; "activating" also covers a unit that
    failed and waits to be restarted."""
    return _systemctl("is-active", UNIT_NAME).stdout.strip()


def stop_unit() -> bool:
    """Stop and disable the unit (an operator who said stop means it, also after the next login);
    whether it was running."""
    if not unit_path().is_file():
        return False
    was_active = unit_state() in ("active", "activating")
    _systemctl("disable", "--now", UNIT_NAME, timeout=STOP_GRACE_S + 10)
    return was_active
