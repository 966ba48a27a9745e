"""`darkbloom login` as a process against a small scripted device-code server (the real
coordinator's routes are tested with it in tests/e2e/test_provider_terminal.py): what it shows,
what it stores, and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.e2e.harness import default_sigint

TOKEN = "darkbloom-pt-" + "5e" * 32


class _Device(BaseHTTPRequestHandler):
    polls = 0
    approve_after = 2

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/device/code":
            self._send(200, {"device_code": "d" * 64, "user_code": "WXYZ-2345",
                             "verification_uri": "http://console.test/link", "expires_in": 900,
                             "interval": 1})
        elif self.path == "/v1/device/token":
            type(self).polls += 1
            if type(self).polls < type(self).approve_after:
                self._send(200, {"status": "authorization_pending"})
            else:
                self._send(200, {"status": "authorized", "token": TOKEN, "account_id": "acct-42"})
        else:
            self._send(404, {"error": {"message": "not found", "type": "not_found"}})


@pytest.fixture
def server() -> Iterator[str]:
    _Device.polls, _Device.approve_after = 0, 2
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Device)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{httpd.server_address[1]}/ws/provider"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKBLOOM_PROVIDER_")}
    return {**env, "HOME": str(tmp_path), "DARKBLOOM_PROVIDER_CONFIG_DIR": str(tmp_path / "cfg"),
            "COLUMNS": "120"}


def test_login_shows_the_code_and_stores_the_token(tmp_path: Path, server: str) -> None:
    done = subprocess.run([sys.executable, "-m", "darkbloom", "login", "--coordinator", server],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "WXYZ-2345" in done.stdout and "http://console.test/link" in done.stdout
    assert "linked to account acct-42" in done.stdout
    assert TOKEN not in done.stdout + done.stderr  # the secret is stored, never shown
    token_file = tmp_path / "cfg" / "token"
    assert token_file.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert _Device.polls == 2


def test_ctrl_c_while_waiting(tmp_path: Path, server: str) -> None:
    _Device.approve_after = 10**6
    proc = subprocess.Popen([sys.executable, "-m", "darkbloom", "login", "--coordinator", server],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        for line in proc.stdout:  # the code is on the screen: the command is waiting
            if "WXYZ-2345" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.strip() == "login cancelled: nothing was stored"
    assert not (tmp_path / "cfg" / "token").exists()


class _Earnings(BaseHTTPRequestHandler):
    body: ClassVar[dict[str, object]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == f"Bearer {TOKEN}" and \
            self.path.startswith("/v1/provider/account-earnings?limit=")
        data = json.dumps(self.body if ok else {"error": {"message": "invalid or revoked provider "
                                                          "token", "type": "authentication_error"}})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())


EARNINGS = {
    "account_id": "acct-42", "available_balance_micro_usd": 1_234_567,
    "withdrawable_balance_micro_usd": 1_000_000, "total_micro_usd": 2_500_001, "count": 3,
    "earnings": [{"created_at": "2026-11-30T10:00:00Z", "model": "smollm2-135m",
                  "prompt_tokens": 12, "completion_tokens": 34, "amount_micro_usd": 1_500}],
    "payouts": [{"created_at": "2026-11-29T09:00:00Z", "amount_micro_usd": 1_000_000,
                 "net_micro_usd": 985_000, "status": "paid", "method": "standard"}],
}


def test_earnings_rendering_and_refusal(tmp_path: Path) -> None:
    _Earnings.body = EARNINGS
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Earnings)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    env = _env(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "token").write_text(TOKEN + "\n")

    def earnings(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "darkbloom", "earnings", "--coordinator", url,
                               *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        done = earnings()
        assert done.returncode == 0, done.stderr
        for shown in ("$1.234567", "(withdrawable $1.000000)", "$2.500001", "Jobs          3",
                      "smollm2-135m", "12/34", "$0.001500", "$0.985000", "paid"):
            assert shown in done.stdout, (shown, done.stdout)
        done = earnings("--json")
        assert json.loads(done.stdout) == EARNINGS
        (tmp_path / "cfg" / "token").write_text("darkbloom-pt-" + "0" * 64 + "\n")  # not this one
        done = earnings()
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            "the coordinator refused this machine's provider token (revoked?): run `darkbloom login` again"]
    finally:
        httpd.shutdown()
        httpd.server_close()
