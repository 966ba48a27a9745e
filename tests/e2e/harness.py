"""Real processes for end-to-end tests, in the manner of vLLM's RemoteOpenAIServer.

A coordinator runs under uvicorn on a free loopback port with its own state directory and
database; providers are `darkbloom serve` processes running llama.cpp on the default model.
Logs go to files so tests can read them (and check that no prompt text is in them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

MODEL = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "darkbloom", *args], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip().splitlines()[-1]


def default_sigint() -> None:
    """``preexec_fn`` for a child a test sends SIGINT to, as a terminal's Ctrl-C would: a suite
    started in the background (``cmd &`` from a shell without job control, as CI may be) ignores
    SIGINT, children inherit that, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (a clean shutdown, as an operator would stop it), SIGKILL after 20 s."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CONSUMER = "local"  # the account `keys create` makes keys for
OPERATOR = "operator"  # the account the harness's providers earn for


class Coordinator:
    def __init__(self, workdir: Path, database_url: str | None = None, **settings: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "coordinator.log"
        self.env = {**os.environ, "DARKBLOOM_STATE_DIR": str(workdir / "state"),
                    "DARKBLOOM_PORT": str(self.port), "DARKBLOOM_LOG_LEVEL": "debug",
                    # Tests sign up and mint keys faster than a person (sign-up is limited per
                    # client IP, and every test's client is 127.0.0.1): the financial tier is
                    # tested where a test turns it on (financial_rate_per_s=...).
                    "DARKBLOOM_FINANCIAL_RATE_PER_S": "0",
                    # As `darkbloom up` does: CONSUMER (the harness's key) is exempt from rate
                    # limits, so tests can hammer; any other account meets the defaults.
                    "DARKBLOOM_RATE_LIMIT_EXEMPT_ACCOUNTS": json.dumps([CONSUMER])}
        if database_url:
            self.env["DARKBLOOM_DATABASE_URL"] = database_url
        for key, value in settings.items():
            self.env[f"DARKBLOOM_{key.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key = ""
        self.provider_token = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/provider"

    def start(self) -> Coordinator:
        if not self.api_key:
            # A funded consumer and a provider linked to a separate operator account: paid work,
            # charged and earned as on a real network.
            self.api_key = _cli(["keys", "create", "--label", "e2e"], self.env)
            _cli(["admin", "credit", "--account", CONSUMER, "--amount", "1000"], self.env)
            self.provider_token = _cli(["admin", "provider-token", "--label", "e2e",
                                        "--account", OPERATOR], self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "darkbloom", "coordinator"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"coordinator exited; see {self.log_path}"
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("coordinator did not become healthy")

    def stop(self) -> None:
        _terminate(self.proc)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0,
                             timeout=120, **kwargs)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key,
                                  max_retries=0, timeout=120)

    def provider_count(self) -> int:
        data = httpx.get(f"{self.base_url}/v1/models", timeout=5).json()["data"]
        return sum(m["metadata"]["provider_count"] for m in data if m["id"] == MODEL)

    def wait_providers(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.provider_count() == n:
                return
            time.sleep(0.1)
        raise TimeoutError(f"expected {n} provider(s), have {self.provider_count()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit(self) -> None:
        """`darkbloom admin audit` against this coordinator's database: ledger and balances agree."""
        done = subprocess.run([sys.executable, "-m", "darkbloom", "admin", "audit"], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


class Provider:
    def __init__(self, coordinator: Coordinator, name: str = "provider", slots: int = 1,
                 threads: int | None = None, fallbacks: tuple[Coordinator, ...] = (),
                 simulated: bool = False, sim_tokens: int = 16, sim_token_s: float = 0.01,
                 sim_prefill_s: float = 0.0) -> None:
        """`fallbacks`: more coordinators of the same network, passed after `coordinator` as
        repeated `serve --coordinator` options (the provider fails over among them in order).
        `simulated`: the SIMULATED provider of tests/e2e/sim_provider.py (the real agent over a
        replayed token stream, no model), for load tests that measure the coordinator."""
        self.coordinator = coordinator
        self.simulated = simulated
        self.args = [arg for c in (coordinator, *fallbacks) for arg in ("--coordinator", c.ws_url)
                     ] if fallbacks else []
        self.log_path = coordinator.workdir / f"{name}.log"
        self.env = {**os.environ, "DARKBLOOM_PROVIDER_TOKEN": coordinator.provider_token,
                    "DARKBLOOM_PROVIDER_COORDINATOR_URL": coordinator.ws_url,
                    "DARKBLOOM_PROVIDER_SLOTS": str(slots),
                    "DARKBLOOM_PROVIDER_CONFIG_DIR": str(coordinator.workdir / f"{name}-config"),
                    "DARKBLOOM_PROVIDER_LOG_LEVEL": "debug"}
        if threads:
            self.env["DARKBLOOM_PROVIDER_THREADS"] = str(threads)
        if simulated:
            self.env.update({"DARKBLOOM_SIM_TOKENS": str(sim_tokens),
                             "DARKBLOOM_SIM_TOKEN_S": str(sim_token_s),
                             "DARKBLOOM_SIM_PREFILL_S": str(sim_prefill_s),
                             "DARKBLOOM_PROVIDER_COORDINATOR_URLS": ",".join(
                                 c.ws_url for c in (coordinator, *fallbacks))})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Provider:
        before = self.coordinator.provider_count()
        log = self.log_path.open("ab")
        command = (["tests.e2e.sim_provider"] if self.simulated
                   else ["darkbloom", "serve", *self.args])
        self.proc = subprocess.Popen([sys.executable, "-m", *command], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        if wait:
            self.coordinator.wait_providers(before + 1)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        _terminate(self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
