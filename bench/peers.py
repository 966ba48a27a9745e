"""The systems the latency bench compares, as separate processes: their venvs and their lives.

Each peer (llama-cpp-python's OpenAI server, a LiteLLM proxy) gets its own venv under
~/.cache/darkbloom/bench-peers/<name>, installed from a lock of exact versions (bench/locks/), so
no peer's dependencies touch darkbloom's .venv or each other's, and a rerun reuses the venv while
its lock, the llama wheel and the Python are unchanged. llama-cpp-python comes from the wheel
scripts/bootstrap.sh caches (built once with GGML_NATIVE=OFF): the same llama.cpp build as
darkbloom's, never rebuilt here when it is there.

darkbloom runs as `make run` runs it (`darkbloom up`: coordinator and provider processes, log
level, access log, SQLite database and slots all as a user gets them), only in a temporary state
directory and on a free port.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
LOCKS = Path(__file__).resolve().parent / "locks"
LLAMA_VERSION = "0.3.36"  # the same as scripts/bootstrap.sh's
PIP_VERSION = "25.3"  # as scripts/bootstrap.sh pins it
PEERS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "darkbloom" / "bench-peers"
READY_TIMEOUT_S = 300.0


def wheel_cache() -> Path:
    """Where scripts/bootstrap.sh keeps the llama-cpp-python wheel (same lookup)."""
    if cache := os.environ.get("DARKBLOOM_WHEEL_CACHE"):
        return Path(cache)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "darkbloom" / "wheels"


def llama_wheel() -> Path:
    """The cached wheel; built once the way bootstrap builds it when missing (~4 min on 2 cores)."""
    cache = wheel_cache()
    found = sorted(cache.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"))
    if not found:
        print(f"bench: building llama-cpp-python {LLAMA_VERSION} into {cache} (as "
              "scripts/bootstrap.sh does)...", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(cache),
                        f"llama-cpp-python=={LLAMA_VERSION}"],
                       env={**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF"}, check=True)
        found = sorted(cache.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"))
    return found[-1]


@dataclass(frozen=True)
class PeerVenv:
    """A venv of exact versions: ``lock`` (pip freeze of a working install) plus, for the llama
    server, the cached llama wheel with its ``[server]`` extra."""

    name: str
    lock: str  # file name under bench/locks/
    with_llama: bool = False

    @property
    def path(self) -> Path:
        return PEERS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ensure(self) -> PeerVenv:
        """Create or refresh the venv when its stamp (lock + wheel + Python) differs."""
        lock = LOCKS / self.lock
        wheel = llama_wheel() if self.with_llama else None
        want = hashlib.sha256(lock.read_bytes() + (wheel.name if wheel else "").encode()
                              + platform.python_version().encode()).hexdigest()
        stamp = self.path / ".bench-stamp"
        if stamp.is_file() and stamp.read_text().strip() == want and self.python.exists():
            return self
        print(f"bench: installing the {self.name} peer into {self.path} (pinned: "
              f"bench/locks/{self.lock})...", flush=True)
        if not self.python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True)
        pip = [str(self.python), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
        subprocess.run([*pip, f"pip=={PIP_VERSION}"], check=True)
        extra = [f"{wheel}[server]"] if wheel else []
        subprocess.run([*pip, "-r", str(lock), *extra], check=True)
        stamp.write_text(want + "\n")
        return self


LLAMA_SERVER = PeerVenv("llama-server", "llama-server.txt", with_llama=True)
LITELLM = PeerVenv("litellm-proxy", "litellm-proxy.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """One started process tree, its log file, and the processes whose CPU the bench reports."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    base_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, psutil.Process] = field(default_factory=dict)  # role -> process

    def wait(self, ready: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until GET ``ready`` answers 200; the log's tail in the error when the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); its log, "
                                   f"{self.log}, ends:\n{tail(self.log)}")
            try:
                if httpx.get(ready, timeout=2, headers=self.headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {timeout_s:.0f} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM the tree (darkbloom up forwards it to its children), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.kill()
                self.proc.kill()
                self.proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _spawn(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None
           ) -> Service:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env=env or dict(os.environ))
    return Service(name, proc, log)


def start_llama_server(model_path: Path, n_ctx: int, threads: int, workdir: Path,
                       name: str = "llama-server") -> Service:
    """llama-cpp-python's OpenAI server, set as the provider sets llama.cpp: the same threads for
    decode and prefill (the server's default decode threads are half the cores), n_batch 512,
    logits for the last token only, no prompt cache. ``interrupt_requests`` off: by default a
    waiting request ends the running stream early with [DONE], which would cut concurrent
    streams short. The server has no continuous batching (nor ``n_parallel``): one context,
    requests take turns behind a lock."""
    port = free_port()
    service = _spawn(name, [
        str(LLAMA_SERVER.ensure().python), "-m", "llama_cpp.server", "--model", str(model_path),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_batch", "512",
        "--logits_all", "False", "--cache", "False", "--verbose", "False",
        "--interrupt_requests", "False"], workdir)
    service.base_url = f"http://127.0.0.1:{port}/v1"
    service.cpu["server"] = psutil.Process(service.proc.pid)
    service.wait(f"{service.base_url}/models")
    return service


def start_litellm(upstream: str, model: str, workdir: Path) -> Service:
    """A LiteLLM proxy with one model routed to ``upstream`` (an OpenAI-compatible base URL), as
    its docs start it (`litellm --config`): a master key (it refuses to start without one, and
    then it checks every request's key, as darkbloom does), no database. The cost map is read
    from the package (no network here), telemetry is off."""
    port = free_port()
    key = "sk-" + secrets.token_hex(32)
    config = workdir / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}
      api_key: none
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
""")
    venv = LITELLM.ensure()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    service = _spawn("litellm", [str(venv.path / "bin" / "litellm"), "--config", str(config),
                                 "--host", "127.0.0.1", "--port", str(port)], workdir, env)
    service.base_url = f"http://127.0.0.1:{port}/v1"
    service.headers = {"Authorization": f"Bearer {key}"}
    service.cpu["proxy"] = psutil.Process(service.proc.pid)
    service.wait(f"http://127.0.0.1:{port}/health/liveliness")
    return service


SLOTS_LINE = re.compile(r"provider \S+ registered: .*?, (\d+) slot\(s\)")


def start_darkbloom(workdir: Path) -> Service:
    """`darkbloom up`, what `make run` runs, in its own state directory on a free port. Everything
    else is inherited as a user's shell would pass it (DARKBLOOM_PROVIDER_SLOTS included)."""
    port = free_port()
    state = workdir / "darkbloom"
    # This checkout's code, even where the venv's editable install points at another worktree.
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "DARKBLOOM_STATE_DIR": str(state), "DARKBLOOM_PORT": str(port),
           "PYTHONPATH": path}
    service = _spawn("darkbloom", [sys.executable, "-m", "darkbloom", "up"], workdir, env)
    dev_env = state / "dev.env"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not dev_env.is_file():  # written once the model is routable
        if service.proc.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"darkbloom up did not come up; {service.log} ends:\n"
                               f"{tail(service.log)}")
        time.sleep(0.2)
    values = dict(line.split("=", 1) for line in dev_env.read_text().splitlines() if "=" in line)
    service.base_url = values["DARKBLOOM_BASE_URL"]
    service.headers = {"Authorization": f"Bearer {values['DARKBLOOM_API_KEY']}"}
    for child in psutil.Process(service.proc.pid).children():
        role = "coordinator" if "coordinator" in child.cmdline() else "provider"
        service.cpu[role] = child
    return service


def darkbloom_slots(service: Service) -> int | None:
    """The slot count the provider advertised, from the coordinator's log line at registration."""
    found = SLOTS_LINE.findall(service.log.read_text(errors="replace"))
    return int(found[-1]) if found else None
