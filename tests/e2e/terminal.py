"""A real terminal for CLI tests: a tmux server of the test's own (its own `-L` socket, no user
config), keys sent as a person types them, the screen read back with capture-pane.

    with Terminal(env) as term:
        term.run("login")
        term.wait_for(r"[A-Z2-9]{4}-[A-Z2-9]{4}")
        term.keys("C-c")
        assert term.wait_exit() == 130

The server is always killed at the end, whatever the test did.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
# One command of `run`: what it printed between two markers that only its output holds (the
# typed line spells them in pieces), and its exit status.
_RUN = re.compile(r"__begin__\n(.*?)__exit=(\d+)__", re.DOTALL)


class Terminal:
    def __init__(self, env: Mapping[str, str], width: int = 140, height: int = 45) -> None:
        self.socket = f"darkbloom-test-{secrets.token_hex(6)}"
        # `darkbloom` on the PATH runs this interpreter: short command lines, as an operator types
        self._bin = Path(tempfile.mkdtemp(prefix="darkbloom-term-"))
        wrapper = self._bin / "darkbloom"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m darkbloom "$@"\n')
        wrapper.chmod(0o755)
        self.env = {**env, "PATH": f"{self._bin}{os.pathsep}{env.get('PATH', os.defpath)}"}
        self.width, self.height = width, height
        self._runs_seen = 0

    def _tmux(self, *args: str) -> str:
        done = subprocess.run([TMUX, "-L", self.socket, "-f", "/dev/null", *args], env=self.env,
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args[:1])} failed: {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> Terminal:
        # A plain shell with a fixed prompt; the server inherits self.env, and so does the shell.
        self._tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
                   "env PS1='$ ' bash --norc --noprofile")
        self._tmux("set-option", "-g", "history-limit", "5000")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=20,
                           check=False)
        finally:
            shutil.rmtree(self._bin, ignore_errors=True)

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def keys(self, *names: str) -> None:
        """tmux key names: "C-c", "Enter", "Up"..."""
        self._tmux("send-keys", "-t", "t", *names)

    def run(self, darkbloom_args: str) -> None:
        """`darkbloom ARGS` (this interpreter), its output and exit status marked on the screen."""
        self.type(f"echo __be''gin__; darkbloom {darkbloom_args}; echo __ex''it=$?__")

    def screen(self) -> str:
        """What the pane shows, with its scrollback, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-5000")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` on the screen, polling until ``timeout`` (or until the
        command of `run` being waited for ends without it)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            found = re.search(pattern, screen)
            if found:
                return found
            if len(_RUN.findall(screen)) > self._runs_seen:  # it ended without showing it
                raise AssertionError(f"the command ended without showing {pattern!r}:\n{screen}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not on the screen within {timeout} s:\n{self.screen()}")
            time.sleep(0.1)

    def wait_done(self, timeout: float = 60) -> tuple[int, str]:
        """The exit status and the output of the next command of `run` to finish."""
        deadline = time.monotonic() + timeout
        while True:
            runs = _RUN.findall(self.screen())
            if len(runs) > self._runs_seen:
                output, status = runs[self._runs_seen]
                self._runs_seen += 1
                return int(status), output
            if time.monotonic() > deadline:
                raise TimeoutError(f"no command ended within {timeout} s:\n{self.screen()}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.wait_done(timeout)[0]
