"""Hostile review of the provider side of issue 11: a hostile coordinator and download server, a
careless operator, a local attacker. Each test is an attack the code must survive (those that once
proved a problem were strict xfails until it was fixed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from darkbloom.cli import daemon
from darkbloom.cli.logtail import MAX_LINE_BYTES, tail_lines
from darkbloom.provider.config_files import ProviderConfigError, read_token, save_token
from darkbloom.provider.model_store import DownloadSpec, ModelStore, StoreError, default_models_dir
from tests.range_server import serving

TOKEN = "darkbloom-pt-" + "c0" * 32
DEEP_JSON = b"[" * 200_000 + b"]" * 200_000  # well under every size cap, far over the recursion limit


# --- a scripted coordinator / download server --------------------------------------------------


class Scripted:
    """path (query dropped) -> (status, body, extra headers), for GET and POST alike."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.port = 0

    def set(self, path: str, status: int, body: object, **headers: str) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, data, headers)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/provider"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def coordinator() -> Iterator[Scripted]:
    script = Scripted()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, body, headers = script.routes.get(self.path.split("?", 1)[0],
                                                      (404, b"{}", {}))
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    script.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield script
    finally:
        httpd.shutdown()
        httpd.server_close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKBLOOM_")}
    src = str(Path(__file__).resolve().parents[3] / "src")
    return {**env, "HOME": str(tmp_path), "DARKBLOOM_PROVIDER_CONFIG_DIR": str(tmp_path / "cfg"),
            "COLUMNS": "200", "PYTHONPATH": src, "TERM": "dumb", **extra}


def darkbloom(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "darkbloom", *args], env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=90, check=False,
                          stdin=subprocess.DEVNULL)


def assert_one_line_error(done: subprocess.CompletedProcess[str]) -> None:
    """provider.md / issue 11: errors are one clear line, never a traceback."""
    everything = done.stdout + done.stderr
    assert "Traceback" not in everything and "Error:" not in everything.replace("error:", ""), everything
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def catalog_entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {"id": "tiny", "display_name": "Tiny", "size_bytes": 10,
                                "sha256": "ab" * 32, "filename": "tiny.gguf",
                                "download_url": "http://127.0.0.1:9/tiny.gguf", "aliases": ["t"]}
    entry.update(changes)
    return entry


# --- systemd unit text ---------------------------------------------------------------------------


def test_unit_environment_file_is_a_path_systemd_accepts(tmp_path: Path) -> None:
    text = daemon.unit_text(tmp_path / "cfg", ["--model", "smollm2-135m"])
    line = next(line for line in text.splitlines() if line.startswith("EnvironmentFile="))
    path = line.removeprefix("EnvironmentFile=").removeprefix("-")
    assert path.startswith("/"), line  # systemd: `EnvironmentFile= path is not absolute, ignoring`
    assert path == f"{tmp_path / 'cfg' / daemon.ENV_FILE}"
    if shutil.which("systemd-analyze"):
        for config_dir in (tmp_path / "cfg", tmp_path / "odd dir 100%"):
            unit = tmp_path / "darkbloom-provider.service"
            unit.write_text(daemon.unit_text(config_dir, ["--model", "smollm2-135m"]))
            checked = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                                     capture_output=True, text=True, timeout=30, check=False)
            assert "EnvironmentFile" not in checked.stderr, checked.stderr
            assert "not absolute" not in checked.stderr, checked.stderr


@pytest.mark.parametrize("config_dir", ["cfg", "cfg\nExecStartPre=/bin/true", "cfg\rx", "c\x1bfg"])
def test_unit_text_newline_in_an_argument_cannot_add_directives(tmp_path: Path, config_dir: str) -> None:
    """No unit with an added directive is ever written: a control character in any argument (a
    --model name, the config dir in the log path and EnvironmentFile=) is refused."""
    evil = "x\nExecStartPre=/bin/touch /tmp/darkbloom-pwned\nExecStart=/bin/true\nDescription=a"
    with pytest.raises(daemon.UnitError, match="control character"):
        daemon.unit_text(tmp_path / config_dir, ["--model", evil])
    if config_dir != "cfg":
        with pytest.raises(daemon.UnitError, match="control character"):
            daemon.unit_text(tmp_path / config_dir, ["--model", "smollm2-135m"])


@pytest.mark.parametrize("model", ["x\nExecStartPre=/bin/touch /tmp/darkbloom-pwned", "a b", "x\x1b[2J",
                                   "../../etc", "-rf", "m" * 200])
def test_start_refuses_a_model_name_that_is_not_a_model_id(tmp_path: Path, model: str) -> None:
    """ProviderSettings.models holds ids (MODEL_ID): refused before any unit or daemon exists."""
    done = darkbloom(tmp_path, "start", "--model", model)
    assert_one_line_error(done)
    assert done.returncode == 2
    assert "\x1b" not in done.stderr
    assert not (tmp_path / "cfg" / "provider.pid").exists()
    assert not (tmp_path / ".config" / "systemd").exists()


def test_unit_environment_file_escapes_specifiers_and_keeps_spaces(tmp_path: Path) -> None:
    config_dir = tmp_path / "odd dir 100%h"
    text = daemon.unit_text(config_dir, ["--model", "smollm2-135m"])
    line = next(line for line in text.splitlines() if line.startswith("EnvironmentFile="))
    assert line == f"EnvironmentFile=-{str(config_dir).replace('%', '%%')}/{daemon.ENV_FILE}"
    with pytest.raises(daemon.UnitError, match="absolute"):
        daemon.unit_text(Path("relative-cfg"), ["--model", "smollm2-135m"])


def test_unit_text_quotes_specifiers_and_dollars(tmp_path: Path) -> None:
    text = daemon.unit_text(tmp_path / "cfg", ["--model", 'a%h$HOME"b\\'])
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert '"a%%h$$HOME\\"b\\\\"' in exec_line


def test_env_file_keeps_only_provider_settings_and_skips_multiline_values() -> None:
    text = daemon.env_file_text({"DARKBLOOM_PROVIDER_TOKEN": TOKEN, "AWS_SECRET": "x",
                                 "DARKBLOOM_PROVIDER_X": 'a"\nEVIL=1', "PATH": "/bin"})
    assert text == f'DARKBLOOM_PROVIDER_TOKEN="{TOKEN}"\n'


# --- an operator's odd settings: one line, never a traceback ---------------------------------------


@pytest.mark.parametrize("command", [["models", "list"], ["doctor"], ["models", "download", "--model", "x"]])
def test_a_coordinator_url_that_is_not_ws_is_one_line(tmp_path: Path, command: list[str]) -> None:
    done = darkbloom(tmp_path, *command, DARKBLOOM_PROVIDER_COORDINATOR_URL="ftp://coordinator.example")
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-400:]
    assert done.returncode != 0


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "provider.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(darkbloom(tmp_path, "config", "show"))


@pytest.mark.parametrize("text", ["[backend]\nslots = 1\nslots = 2\n", "[backend]\nmodels = 5\n",
                                  "\ufeff[backend]\n", "[backend]\nengine = 'llama.cpp\x00'\n",
                                  "[schedule]\nenabled = true\n", "[[backend]]\n",
                                  "[schedule]\nenabled = true\n[[schedule.windows]]\ndays=['mon']\n"
                                  "start = 22:00:30\nend = '08:00'\n"])
def test_odd_toml_is_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "provider.toml").write_bytes(text.encode())
    done = darkbloom(tmp_path, "config", "show")
    assert done.returncode == 2
    assert_one_line_error(done)


def test_a_fifo_or_device_at_the_token_path_is_one_line_not_a_hang(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    os.mkfifo(cfg / "token")
    assert_one_line_error(darkbloom(tmp_path, "config", "show"))
    (cfg / "token").unlink()
    (cfg / "token").symlink_to("/dev/zero")
    assert_one_line_error(darkbloom(tmp_path, "status", "--json"))
    (cfg / "token").unlink()
    (cfg / "token").write_bytes(b"x" * 10_000_000)
    with pytest.raises(ProviderConfigError, match="too large"):
        read_token(cfg)


def test_config_show_never_prints_the_token_or_url_secrets(tmp_path: Path) -> None:
    done = darkbloom(tmp_path, "config", "show", "--json",
                     DARKBLOOM_PROVIDER_TOKEN=TOKEN,
                     DARKBLOOM_PROVIDER_COORDINATOR_URLS="wss://op:hunter2@c.example/ws/provider?key=s3cret")
    assert done.returncode == 0, done.stderr
    for secret in (TOKEN, "hunter2", "s3cret"):
        assert secret not in done.stdout + done.stderr
    table = darkbloom(tmp_path, "config", "show", DARKBLOOM_PROVIDER_TOKEN=TOKEN,
                      DARKBLOOM_PROVIDER_COORDINATOR_URL="wss://op:hunter2@c.example/ws/provider?key=s3cret")
    for secret in (TOKEN, "hunter2", "s3cret"):
        assert secret not in table.stdout + table.stderr


def test_a_bad_token_variable_is_one_line_without_its_value(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "token").write_text("darkbloom-pt-abc def-secretpart\n")
    done = darkbloom(tmp_path, "status")
    assert_one_line_error(done)
    assert "secretpart" not in done.stderr


def test_the_config_dir_is_0700_whichever_command_made_it(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    blob = os.urandom(1000)
    store = ModelStore(default_models_dir(cfg))
    with serving({"m.gguf": blob}) as server:
        store.download(DownloadSpec(id="m", filename="m.gguf", download_url=server.url("m.gguf"),
                                    sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob)))
    save_token(cfg, TOKEN)
    assert stat.S_IMODE((cfg / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o700
    assert stat.S_IMODE((cfg / "models").stat().st_mode) == 0o700


def test_a_coordinator_url_setting_that_is_not_ws_is_refused() -> None:
    from pydantic import ValidationError

    from darkbloom.config import ProviderSettings

    for url in ("ftp://coordinator.example", "http://c.example", "ws://", "ws://h:99999/x"):
        with pytest.raises(ValidationError, match="coordinator URL"):
            ProviderSettings(coordinator_url=url)
    assert ProviderSettings(coordinator_url=" wss://c.example/ws/provider ").coordinators == [
        "wss://c.example/ws/provider"]


# --- a hostile coordinator -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["models", "earnings", "login"])
def test_a_deeply_nested_answer_is_one_line(tmp_path: Path, coordinator: Scripted, command: str) -> None:
    for path in ("/v1/models/catalog", "/v1/provider/account-earnings", "/v1/device/code"):
        coordinator.set(path, 200, DEEP_JSON)
    save_token(tmp_path / "cfg", TOKEN)
    args = {"models": ["models", "download", "--model", "tiny"],
            "earnings": ["earnings", "--json"], "login": ["login"]}[command]
    assert_one_line_error(darkbloom(tmp_path, *args, "--coordinator", coordinator.ws))


def test_catalog_aliases_of_the_wrong_type_are_one_line(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/models/catalog", 200, {"models": [catalog_entry(id="other", aliases=5),
                                                           catalog_entry()]})
    done = darkbloom(tmp_path, "models", "download", "--model", "nothing-here", "--coordinator",
                     coordinator.ws)
    assert_one_line_error(done)


def test_catalog_aliases_that_are_a_string_do_not_match_substrings(tmp_path: Path,
                                                                   coordinator: Scripted) -> None:
    coordinator.set("/v1/models/catalog", 200, {"models": [catalog_entry(id="other", aliases="abc")]})
    done = darkbloom(tmp_path, "models", "download", "--model", "b", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert "no model 'b'" in done.stderr


def test_models_list_does_not_pass_terminal_escapes_through(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/models/catalog", 200, {"models": [
        catalog_entry(id="x\x1b]52;c;ZWNobyBwd25lZA==\x07y", quantization="\x1b[2J")]})
    done = darkbloom(tmp_path, "models", "list", "--coordinator", coordinator.ws)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # not a terminal: Rich adds no escapes of its own


def test_models_list_json_escapes_control_characters(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/models/catalog", 200, {"models": [catalog_entry(id="x\x1b[2Jy")]})
    done = darkbloom(tmp_path, "models", "list", "--json", "--coordinator", coordinator.ws)
    assert done.returncode == 0 and "\x1b" not in done.stdout
    assert json.loads(done.stdout)["models"][0]["id"] == "x\x1b[2Jy"


@pytest.mark.parametrize("answer", [
    {"models": "nope"}, {"models": [1, None, {"id": 5}, {"no": "id"}]}, [1, 2],
    {"models": [catalog_entry(size_bytes=-5, display_name=["x"], quantization={"a": 1})]},
    {"models": [catalog_entry(size_bytes=10**30, sha256=None, download_url=5)]},
])
def test_models_list_survives_odd_catalog_shapes(tmp_path: Path, coordinator: Scripted,
                                                 answer: object) -> None:
    coordinator.set("/v1/models/catalog", 200, answer)
    done = darkbloom(tmp_path, "models", "list", "--json", "--coordinator", coordinator.ws)
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)


def test_a_huge_catalog_is_refused_not_buffered(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/models/catalog", 200, b" " * (5 * 2**20) + b"{}")
    done = darkbloom(tmp_path, "models", "download", "--model", "tiny", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert "too large" in done.stderr


@pytest.mark.parametrize("filename", ["../../evil.gguf", "/etc/evil.gguf", ".hidden.gguf",
                                      "evil.gguf/x", "evil.so", "a\x00.gguf", "..gguf"])
def test_catalog_filenames_cannot_leave_the_models_dir(tmp_path: Path, coordinator: Scripted,
                                                       filename: str) -> None:
    coordinator.set("/v1/models/catalog", 200, {"models": [catalog_entry(filename=filename)]})
    done = darkbloom(tmp_path, "models", "download", "--model", "tiny", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert not list(tmp_path.rglob("evil*"))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.gguf", "javascript:1", "http:///x",
                                 "http://" + "a" * 3000 + "/x.gguf"])
def test_catalog_download_urls_must_be_http(url: str) -> None:
    with pytest.raises(StoreError):
        DownloadSpec.from_catalog(catalog_entry(download_url=url))


def test_earnings_of_the_wrong_shape_is_one_line_or_works(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/provider/account-earnings", 200, {"earnings": 5, "payouts": 7, "count": "x"})
    save_token(tmp_path / "cfg", TOKEN)
    done = darkbloom(tmp_path, "earnings", "--coordinator", coordinator.ws)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-300:]


def test_earnings_rows_are_not_rich_markup(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/v1/provider/account-earnings", 200, {
        "available_balance_micro_usd": 1, "total_micro_usd": 1, "count": 1,
        "earnings": [{"created_at": "now", "model": "[/oops]", "prompt_tokens": 1,
                      "completion_tokens": 1, "amount_micro_usd": 1}]})
    save_token(tmp_path / "cfg", TOKEN)
    done = darkbloom(tmp_path, "earnings", "--coordinator", coordinator.ws)
    assert done.returncode == 0, done.stderr[-300:]
    assert "[/oops]" in done.stdout


def test_earnings_json_never_sends_the_token_elsewhere_or_prints_it(tmp_path: Path,
                                                                    coordinator: Scripted) -> None:
    coordinator.set("/v1/provider/account-earnings", 302, {}, Location="http://127.0.0.1:9/steal")
    save_token(tmp_path / "cfg", TOKEN)
    done = darkbloom(tmp_path, "earnings", "--json", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert TOKEN not in done.stdout + done.stderr


def _device(coordinator: Scripted, **token_answer: object) -> None:
    coordinator.set("/v1/device/code", 200, {"device_code": "d" * 64, "user_code": "WXYZ-2345",
                                             "verification_uri": "http://console.test/link",
                                             "expires_in": 30, "interval": 1})
    coordinator.set("/v1/device/token", 200, {"status": "authorized", **token_answer})


def test_login_account_id_is_not_markup(tmp_path: Path, coordinator: Scripted) -> None:
    _device(coordinator, token=TOKEN, account_id="acct[/x]")
    done = darkbloom(tmp_path, "login", "--coordinator", coordinator.ws)
    assert done.returncode == 0, done.stderr[-300:]
    assert "acct[/x]" in done.stdout


@pytest.mark.parametrize("token", ["darkbloom-pt-ab cd", "darkbloom-pt-\u00e9t\u00e9"])
def test_login_with_a_token_of_the_wrong_shape_is_one_line(tmp_path: Path, coordinator: Scripted,
                                                           token: str) -> None:
    _device(coordinator, token=token, account_id="acct-1")
    done = darkbloom(tmp_path, "login", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert not (tmp_path / "cfg" / "token").exists()


@pytest.mark.parametrize("code_answer", [
    {"device_code": "d", "user_code": "A", "verification_uri": "http://x/\x1b]0;pwn\x07"},
    {"device_code": "d", "user_code": "\x1b[2J", "verification_uri": "http://x/link"},
    {"device_code": "d", "user_code": "A", "verification_uri": "javascript:alert(1)"},
    {"device_code": ["d"], "user_code": "A", "verification_uri": "http://x/link"},
])
def test_login_refuses_device_codes_with_escapes_or_odd_shapes(tmp_path: Path, coordinator: Scripted,
                                                              code_answer: dict[str, object]) -> None:
    coordinator.set("/v1/device/code", 200, code_answer)
    done = darkbloom(tmp_path, "login", "--coordinator", coordinator.ws)
    assert_one_line_error(done)
    assert "\x1b" not in done.stdout + done.stderr


def test_login_user_code_markup_is_shown_literally(tmp_path: Path, coordinator: Scripted) -> None:
    _device(coordinator, token=TOKEN, account_id="acct-1")
    coordinator.set("/v1/device/code", 200, {"device_code": "d" * 64, "user_code": "[/x][red]",
                                             "verification_uri": "http://console.test/[link=x]",
                                             "expires_in": 30, "interval": 1})
    done = darkbloom(tmp_path, "login", "--coordinator", coordinator.ws)
    assert done.returncode == 0, done.stderr[-300:]
    assert "[/x][red]" in done.stdout and "[link=x]" in done.stdout


# --- downloads against a hostile server --------------------------------------------------------


BLOB = os.urandom(300_000)
SHA = hashlib.sha256(BLOB).hexdigest()


def _spec(url: str, **changes: object) -> DownloadSpec:
    fields: dict[str, object] = {"id": "tiny", "filename": "tiny.gguf", "download_url": url,
                                 "sha256": SHA, "size_bytes": len(BLOB)}
    fields.update(changes)
    return DownloadSpec(**fields)  # type: ignore[arg-type]


def test_a_redirect_to_file_url_installs_nothing(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/tiny.gguf", 302, b"", Location="file:///etc/passwd")
    store = ModelStore(tmp_path / "models")
    with pytest.raises(StoreError, match="interrupted"):
        store.download(_spec(coordinator.url("/tiny.gguf")))
    assert store.find("tiny") is None
    assert not (tmp_path / "models" / "tiny.gguf").exists()


def test_a_server_sending_more_than_the_catalog_size_installs_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with serving({"tiny.gguf": BLOB}, extra=b"\0" * 2_000_000) as server, \
            pytest.raises(StoreError, match="more than"):
        store.download(_spec(server.url("tiny.gguf")))
    assert sorted(p.name for p in store.models_dir.iterdir() if not p.name.startswith(".")) == []


def test_a_lying_smaller_size_and_a_wrong_hash_install_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with serving({"tiny.gguf": BLOB}) as server:
        with pytest.raises(StoreError):
            store.download(_spec(server.url("tiny.gguf"), size_bytes=len(BLOB) - 1))
        with pytest.raises(StoreError, match="SHA-256"):
            store.download(_spec(server.url("tiny.gguf"), sha256="0" * 64))
    assert store.find("tiny") is None and not (store.models_dir / "tiny.gguf").exists()


def test_a_part_file_of_another_model_is_not_installed_as_this_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.models_dir.mkdir(parents=True)
    (store.models_dir / "tiny.gguf.part").write_bytes(os.urandom(len(BLOB) // 2))  # someone else's
    with serving({"tiny.gguf": BLOB}) as server:
        with pytest.raises(StoreError, match="SHA-256"):
            store.download(_spec(server.url("tiny.gguf")))
        model = store.download(_spec(server.url("tiny.gguf")))  # then a clean restart works
    assert model.weight_hash == SHA and model.path.read_bytes() == BLOB


def test_a_symlinked_part_file_is_never_written_through(tmp_path: Path) -> None:
    """A local attacker who can plant a .part symlink must not get the download written elsewhere."""
    store = ModelStore(tmp_path / "models")
    store.models_dir.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (store.models_dir / "tiny.gguf.part").symlink_to(victim)
    with serving({"tiny.gguf": BLOB}) as server, pytest.raises(StoreError, match="link or not a file"):
        store.download(_spec(server.url("tiny.gguf")))
    assert victim.read_bytes() == b"precious"


def test_a_fifo_part_file_is_refused_and_a_real_one_is_private(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.models_dir.mkdir(parents=True)
    os.mkfifo(store.models_dir / "tiny.gguf.part")
    with serving({"tiny.gguf": BLOB}) as server:
        with pytest.raises(StoreError, match="not a regular file"):
            store.download(_spec(server.url("tiny.gguf")))
        (store.models_dir / "tiny.gguf.part").unlink()
        server.cut_after = len(BLOB) // 3
        server.release.set()  # the cut transfer ends at once
        with pytest.raises(StoreError):
            store.download(_spec(server.url("tiny.gguf")))
        part = store.models_dir / "tiny.gguf.part"
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        server.cut_after = None
        model = store.download(_spec(server.url("tiny.gguf")))  # resumed through the same open
    assert model.path.read_bytes() == BLOB


def test_an_alias_never_shadows_another_models_id(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, meta in (("a-evil.gguf", {"id": "evil", "aliases": ["victim"]}),
                       ("victim.gguf", {"id": "victim"})):
        (models / name).write_bytes(os.urandom(64))
        (models / (name + ".json")).write_text(json.dumps(meta))
    store = ModelStore(models)
    found = store.find("victim")
    assert found is not None and found.id == "victim"
    store.remove("victim")
    assert (models / "a-evil.gguf").exists()


def test_tampered_sidecars_are_ignored_not_fatal(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.gguf").write_bytes(b"weights")
    (models / "m.gguf.json").write_bytes(b"{" * 100_000)
    (models / "m.gguf.sha256").write_text(json.dumps({"size": 7, "mtime_ns": 0, "sha256": "x"}))
    (models / "n.gguf").write_bytes(b"weights2")
    (models / "n.gguf.json").write_text(json.dumps({"id": "../../etc", "aliases": [1, None]}))
    ids = {m.id for m in ModelStore(models).installed()}
    assert "m" in ids and "../../etc" not in ids
    model = ModelStore(models).find("m")
    assert model is not None and model.weight_hash == hashlib.sha256(b"weights").hexdigest()


def test_remove_unlinks_a_symlinked_model_not_its_target(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    target = tmp_path / "elsewhere.gguf"
    target.write_bytes(b"not yours")
    (models / "link.gguf").symlink_to(target)
    ModelStore(models).remove("link")
    assert target.read_bytes() == b"not yours" and not (models / "link.gguf").is_symlink()


# --- the daemon ----------------------------------------------------------------------------------


def test_stop_never_signals_a_stranger_named_in_the_pidfile(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        daemon.write_pid(daemon.pidfile_path(cfg), stranger.pid)
        result = daemon.stop_pidfile_daemon(cfg)
        assert result.pid is None and result.stale
        assert stranger.poll() is None
        for text in ("1\n", "-1", "0", "999999999999", "\x00\x01", " 12 34"):
            daemon.pidfile_path(cfg).write_text(text)
            assert daemon.stop_pidfile_daemon(cfg).pid is None
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


def test_a_symlinked_pidfile_is_removed_not_its_target(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    target = tmp_path / "important"
    target.write_text(f"{os.getpid()}\n")
    daemon.pidfile_path(cfg).symlink_to(target)
    daemon.stop_pidfile_daemon(cfg)
    assert target.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("command", [["stop"], ["status", "--json"]])
def test_a_binary_pidfile_is_stale_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "provider.pid").write_bytes(b"\xde\xad\xbe\xef" * 64)
    done = darkbloom(tmp_path, *command)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-300:]
    assert done.returncode == 0


def test_a_pidfile_that_is_a_directory_is_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "provider.pid").mkdir()
    status = darkbloom(tmp_path, "status", "--json")
    assert "Traceback" not in status.stdout + status.stderr
    assert json.loads(status.stdout)["running"] is False


def test_tail_of_a_binary_log_with_a_huge_line_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "provider.log"
    log.write_bytes(b"first\n" + os.urandom(3 * 2**20).replace(b"\n", b"x") + b"\nlast \xff\xfe\n")
    lines = tail_lines(log, 3)
    assert lines[-1].startswith("last") and len(lines) <= 3
    assert all(len(line.encode()) <= 4 * MAX_LINE_BYTES for line in lines)


def test_logs_command_on_a_binary_log_is_clean(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "provider.log").write_bytes(os.urandom(200_000))
    done = darkbloom(tmp_path, "logs", "-n", "10000")
    assert done.returncode == 0 and "Traceback" not in done.stderr


# --- benchmark / doctor with odd input ------------------------------------------------------------


def test_benchmark_of_a_model_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(darkbloom(tmp_path, "benchmark", "--model", "no-such-model"))


def test_doctor_against_a_hostile_health_answer(tmp_path: Path, coordinator: Scripted) -> None:
    coordinator.set("/health", 200, b"x", Date="Mon, 01 Jan 2020 00:00:00 +9999")
    done = darkbloom(tmp_path, "doctor", "--coordinator", coordinator.ws)
    assert "Traceback" not in done.stdout + done.stderr
    assert "Result:" in done.stdout


# --- a server that trickles: a total deadline, not only a per-read timeout --------------------------


@pytest.fixture
def trickler() -> Iterator[str]:
    """http://127.0.0.1:<port>: every GET or POST answers 200 with a large Content-Length, then one
    byte every 20 ms (far inside any per-read timeout) until the client goes away."""
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _trickle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                while not done.wait(0.02):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass

        do_GET = do_POST = _trickle

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        done.set()
        httpd.shutdown()
        httpd.server_close()


def test_a_trickled_catalog_hits_the_total_deadline(tmp_path: Path, trickler: str) -> None:
    from darkbloom.cli.provider_common import fetch_catalog
    from darkbloom.config import ProviderSettings

    settings = ProviderSettings(coordinator_urls=[trickler.replace("http", "ws") + "/ws/provider"],
                                config_dir=tmp_path)
    with pytest.raises(OSError, match=r"no whole catalog within 0\.3 s"):
        fetch_catalog(settings, deadline_s=0.3)


def test_a_trickled_login_answer_hits_the_total_deadline(trickler: str) -> None:
    import httpx

    from darkbloom.cli.device_login import LoginError, call

    with httpx.Client() as client, pytest.raises(LoginError, match=r"took over 0\.3 s"):
        call(client, "POST", f"{trickler}/v1/device/code", json_body={}, deadline_s=0.3)


def test_a_trickled_download_falls_under_the_minimum_rate(tmp_path: Path, trickler: str) -> None:
    from darkbloom.provider.model_store import MinRate

    store = ModelStore(tmp_path / "models")
    spec = _spec(f"{trickler}/tiny.gguf", size_bytes=10**7)
    with pytest.raises(StoreError, match=r"slowed to under 1000000 bytes in 0\.3 s"):
        store.download(spec, min_rate=MinRate(1_000_000, 0.3))
    assert store.find("tiny") is None
    assert 0 < store.partial_bytes(spec) < 1_000_000  # what came is kept, to resume from
