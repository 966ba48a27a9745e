"""`darkbloom up` (what `make run` runs): routable model, dev.env, clean stop, same key on restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

from tests.e2e.harness import MODEL, free_port


def _up(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DARKBLOOM_PORT": str(port)}
    env.pop("DARKBLOOM_STATE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "darkbloom", "up"], cwd=workdir, env=env,
                            stdout=(workdir / "up.log").open("ab"), stderr=subprocess.STDOUT)


def _wait_env(workdir: Path, proc: subprocess.Popen[bytes], since: float) -> dict[str, str]:
    dev_env = workdir / ".darkbloom" / "dev.env"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "up.log").read_text()
        if dev_env.is_file() and dev_env.stat().st_mtime > since:
            lines = dev_env.read_text().splitlines()
            assert len(lines) == 3
            return dict(line.split("=", 1) for line in lines)
        time.sleep(0.2)
    raise TimeoutError("dev.env was not written")


def _stop(proc: subprocess.Popen[bytes], signum: int) -> None:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == 2  # coordinator + provider
    proc.send_signal(signum)
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "orphaned darkbloom processes"


def test_up_serves_stops_cleanly_and_keeps_its_key(tmp_path: Path) -> None:
    port = free_port()
    proc = _up(tmp_path, port)
    try:
        env = _wait_env(tmp_path, proc, since=0)
        assert env["DARKBLOOM_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
        key = env["DARKBLOOM_API_KEY"]
        assert key.startswith("sk-db-")
        client = openai.OpenAI(base_url=env["DARKBLOOM_BASE_URL"], api_key=key, max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL]
        reply = client.chat.completions.create(model=MODEL, max_tokens=3,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
        assert (tmp_path / ".darkbloom" / "coordinator.db").is_file()
        banner = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/v1" in banner and "balance:  $100.000000" in banner
        # Charged to the dev consumer, earned by the provider's separate operator account.
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{port}"
        # Settling is written just after the answer's last byte: wait for the row (it raced).
        deadline = time.monotonic() + 30
        while not (rows := httpx.get(f"{base}/v1/payments/usage", headers=headers).json()["usage"]):
            assert time.monotonic() < deadline, "the request was never settled"
            time.sleep(0.1)
        [row] = rows
        assert row["cost_micro_usd"] >= 100 and not row["self_routed"]
        balance = httpx.get(f"{base}/v1/payments/balance", headers=headers).json()
        assert balance["balance_micro_usd"] == 100_000_000 - row["cost_micro_usd"]
        admin = {"Authorization": f"Bearer {env['DARKBLOOM_ADMIN_KEY']}"}
        assert httpx.get(f"{base}/v1/admin/actions", headers=admin).status_code == 200
        _stop(proc, signal.SIGTERM)

        time.sleep(1.1)  # the rewrite must be told apart from the first run's file by mtime
        restarted_at = time.time()
        proc = _up(tmp_path, port)
        again = _wait_env(tmp_path, proc, since=restarted_at)
        assert again["DARKBLOOM_API_KEY"] == key  # state survives restarts
        assert again["DARKBLOOM_ADMIN_KEY"] == env["DARKBLOOM_ADMIN_KEY"]
        reply = client.chat.completions.create(model=MODEL, max_tokens=3,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage is not None
        _stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
