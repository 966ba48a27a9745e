"""Per-account rate limits (api.md §1, docs/rate-limits.md) against real coordinator processes and
the official OpenAI and Anthropic SDKs (max_retries=0, so a 429 reaches the test): the default
inference tier (10 at once, then 1/s) in each dialect's headers and error body, malformed requests
spending the allowance, the admin key's bypass, the dev account's exemption, the headers on
admitted responses (a real provider, streamed and not), and two coordinators sharing one budget
through Redis on one PostgreSQL database.

Most requests name a model nobody serves: a fast 404 after the request was counted, no provider
needed. A 429 against any other status is what shows the count."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import psutil
import pytest
import redis

from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.e2e.harness import CONSUMER, MODEL, Coordinator, Provider, _cli, free_port

ADMIN_KEY = "adm-" + uuid.uuid4().hex
PASSWORD = "correct horse battery staple"
REDIS_URL = "redis://127.0.0.1:6379/0"
NOBODY = "no-such-model"  # 404 model_not_found, after the limit has counted the request
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?s$|^\d+ms$")
OPENAI_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                  "x-ratelimit-reset-requests")
ANTHROPIC_HEADERS = ("anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
                     "anthropic-ratelimit-requests-reset")
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """The defaults of api.md §1 for both tiers (the harness turns the financial tier off)."""
    coordinator = Coordinator(tmp_path_factory.mktemp("rate-limits"), admin_key=ADMIN_KEY,
                              financial_rate_per_s="0.2", financial_burst="3").start()
    try:
        yield coordinator
    finally:
        coordinator.stop()


def _new_key(stack: Coordinator, fund: bool = False) -> str:
    """An API key for a fresh account: limited like any account but the dev consumer."""
    account = "acct-" + uuid.uuid4().hex[:12]
    key = _cli(["keys", "create", "--account", account], stack.env)
    if fund:
        _cli(["admin", "credit", "--account", account, "--amount", "1"], stack.env)
    return key


def _openai(stack: Coordinator, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def _anthropic(stack: Coordinator, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=key, max_retries=0, timeout=60)


def _unix(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _assert_openai_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    headers = response.headers
    assert 1 <= int(headers["retry-after"]) <= 10
    assert time.time() < int(headers["x-ratelimit-reset"]) <= time.time() + 11
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert GO_DURATION.match(headers["x-ratelimit-reset-requests"]), headers["x-ratelimit-reset-requests"]
    assert not any(name in headers for name in ANTHROPIC_HEADERS)
    error = response.json()["error"]
    assert error["type"] == error["code"] == "rate_limit_exceeded" and error["param"] is None
    assert "inference" in error["message"]


def test_openai_routes_share_a_burst_of_ten_then_429(stack: Coordinator) -> None:
    client = _openai(stack, _new_key(stack))
    calls = [
        lambda: client.chat.completions.with_raw_response.create(model=NOBODY, messages=HI),
        lambda: client.completions.with_raw_response.create(model=NOBODY, prompt="hi"),
        lambda: client.responses.with_raw_response.create(model=NOBODY, input="hi"),
    ]
    for n in range(10):
        with pytest.raises(openai.NotFoundError) as missing:
            calls[n % 3]()
        headers = missing.value.response.headers  # the allowance shows on every answer it counted
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-remaining-requests"] == str(9 - n)
        assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
    for call in calls:
        with pytest.raises(openai.RateLimitError) as refused:
            call()
        _assert_openai_429(refused.value.response)
        assert refused.value.code == "rate_limit_exceeded"


def test_messages_429_speaks_anthropic(stack: Coordinator) -> None:
    client = _anthropic(stack, _new_key(stack))
    for n in range(10):
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(model=NOBODY, max_tokens=2, messages=HI)
        assert missing.value.response.headers["anthropic-ratelimit-requests-remaining"] == str(9 - n)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=NOBODY, max_tokens=2, messages=HI)
    response = refused.value.response
    headers = response.headers
    assert response.status_code == 429 and 1 <= int(headers["retry-after"]) <= 10
    assert time.time() < int(headers["x-ratelimit-reset"]) <= time.time() + 11
    assert headers["anthropic-ratelimit-requests-limit"] == "10"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert time.time() < _unix(headers["anthropic-ratelimit-requests-reset"]) <= time.time() + 12
    assert not any(name in headers for name in OPENAI_HEADERS)
    body = response.json()
    assert body == {"type": "error", "error": {"type": "rate_limit_error",
                                               "message": body["error"]["message"]}}
    assert refused.value.body == body


@pytest.mark.parametrize("content_type", ["application/json", "application/darkbloom-sealed+json"])
def test_malformed_requests_spend_the_allowance(stack: Coordinator, content_type: str) -> None:
    """Counted before the body is read: a flood of garbage costs the flooder, not the coordinator."""
    key = _new_key(stack)
    routes = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]
    with httpx.Client(base_url=stack.base_url, timeout=30,
                      headers={"authorization": f"Bearer {key}", "content-type": content_type}) as http:
        for n in range(10):
            answer = http.post(routes[n % 4], content=b'{"model": "' + MODEL.encode() + b'", nope')
            assert answer.status_code == 400, answer.text
        for route in routes:  # a valid request after that waits its turn like any other
            valid = http.post(route, json={"model": MODEL, "max_tokens": 2, "messages": HI,
                                           "prompt": "hi", "input": "hi"},
                              headers={"content-type": "application/json"})
            assert valid.status_code == 429, valid.text
            if route == "/v1/messages":
                assert valid.json()["error"]["type"] == "rate_limit_error"
            else:
                _assert_openai_429(valid)


def test_the_admin_key_is_never_limited(stack: Coordinator) -> None:
    admin = httpx.Client(base_url=stack.base_url, timeout=30,
                         headers={"authorization": f"Bearer {ADMIN_KEY}"})
    made = [admin.post("/v1/admin/invite-codes", json={"amount_usd": "0.01"}).status_code
            for _ in range(6)]
    assert made == [201] * 6  # the financial tier allows 3
    signups = [admin.post("/v1/auth/signup", json={"email": f"a-{uuid.uuid4().hex[:8]}@example.com",
                                                   "password": PASSWORD}).status_code
               for _ in range(5)]
    assert signups == [201] * 5  # sign-up is limited per IP, but not for the admin key
    # It is no consumer credential: inference needs an API key (and its account's allowance).
    assert admin.post("/v1/chat/completions", json={"model": NOBODY, "messages": HI}).status_code == 401


def test_dev_account_is_exempt_and_a_new_account_is_not(stack: Coordinator) -> None:
    dev = _openai(stack, stack.api_key)  # the harness's CONSUMER, exempt as in `darkbloom up`
    for _ in range(25):
        with pytest.raises(openai.NotFoundError) as missing:
            dev.chat.completions.create(model=NOBODY, messages=HI)
        assert "x-ratelimit-limit-requests" not in missing.value.response.headers
    # A new account made over the API (sign-up, then a key) meets the defaults.
    http = httpx.Client(base_url=stack.base_url, timeout=30)
    signup = http.post("/v1/auth/signup", json={"email": f"n-{uuid.uuid4().hex[:8]}@example.com",
                                                "password": PASSWORD})
    assert signup.status_code == 201, signup.text
    assert signup.json()["account_id"] != CONSUMER
    made = http.post("/v1/auth/keys", json={},
                     headers={"authorization": f"Bearer {signup.json()['session_token']}"})
    assert made.status_code == 200, made.text
    new = _openai(stack, made.json()["api_key"])
    for _ in range(10):
        with pytest.raises(openai.NotFoundError):
            new.chat.completions.create(model=NOBODY, messages=HI)
    with pytest.raises(openai.RateLimitError):
        new.chat.completions.create(model=NOBODY, messages=HI)


def test_admitted_answers_carry_the_headers_streamed_or_not(stack: Coordinator) -> None:
    """As OpenAI and Anthropic do: every answer says where the caller's allowance stands."""
    provider = Provider(stack).start()
    try:
        key = _new_key(stack, fund=True)
        gpt, claude = _openai(stack, key), _anthropic(stack, key)
        plain = gpt.chat.completions.with_raw_response.create(model=MODEL, max_tokens=2, messages=HI)
        assert plain.http_response.status_code == 200 and plain.parse().choices
        remaining = [plain.headers["x-ratelimit-remaining-requests"]]
        with gpt.chat.completions.with_streaming_response.create(
                model=MODEL, max_tokens=2, messages=HI, stream=True) as streamed:
            assert streamed.http_response.status_code == 200
            assert GO_DURATION.match(streamed.headers["x-ratelimit-reset-requests"])
            remaining.append(streamed.headers["x-ratelimit-remaining-requests"])
            assert any(chunk.choices for chunk in streamed.parse())
        message = claude.messages.with_raw_response.create(model=MODEL, max_tokens=2, messages=HI)
        assert message.http_response.status_code == 200 and message.parse().content is not None
        remaining.append(message.headers["anthropic-ratelimit-requests-remaining"])
        with claude.messages.with_streaming_response.create(
                model=MODEL, max_tokens=2, messages=HI, stream=True) as events:
            assert events.http_response.status_code == 200
            assert events.headers["anthropic-ratelimit-requests-limit"] == "10"
            reset = _unix(events.headers["anthropic-ratelimit-requests-reset"])
            assert time.time() - 1 < reset <= time.time() + 12
            assert not any(name in events.headers for name in OPENAI_HEADERS)
            remaining.append(events.headers["anthropic-ratelimit-requests-remaining"])
            assert [event.type for event in events.parse()][-1] == "message_stop"
        # Each counted (at most 9 left); how many slots freed meanwhile depends on generation time.
        assert all(0 <= int(left) <= 9 for left in remaining), remaining
    finally:
        provider.stop()


def test_darkbloom_up_exempts_its_dev_account(tmp_path: Path) -> None:
    """`darkbloom up` (make run) marks its dev consumer exempt: a test suite can hammer the dev
    stack with the key in dev.env, while an account made on that stack is limited."""
    env = {**os.environ, "DARKBLOOM_PORT": str(free_port())}
    env.pop("DARKBLOOM_STATE_DIR", None)
    env.pop("DARKBLOOM_RATE_LIMIT_EXEMPT_ACCOUNTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "darkbloom", "up"], cwd=tmp_path, env=env,
                            stdout=(tmp_path / "up.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        dev_env = tmp_path / ".darkbloom" / "dev.env"
        deadline = time.monotonic() + 180
        while not dev_env.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        dev = dict(line.split("=", 1) for line in dev_env.read_text().splitlines())
        hammer = openai.OpenAI(base_url=dev["DARKBLOOM_BASE_URL"], api_key=dev["DARKBLOOM_API_KEY"],
                               max_retries=0, timeout=60)
        for _ in range(15):
            with pytest.raises(openai.NotFoundError) as missing:
                hammer.chat.completions.create(model=NOBODY, messages=HI)
            assert "x-ratelimit-limit-requests" not in missing.value.response.headers
        cli_env = {**os.environ, "DARKBLOOM_STATE_DIR": str(tmp_path / ".darkbloom")}
        new_key = _cli(["keys", "create", "--account", "acct-" + uuid.uuid4().hex[:12]], cli_env)
        new = openai.OpenAI(base_url=dev["DARKBLOOM_BASE_URL"], api_key=new_key, max_retries=0,
                            timeout=60)
        for _ in range(10):
            with pytest.raises(openai.NotFoundError):
                new.chat.completions.create(model=NOBODY, messages=HI)
        with pytest.raises(openai.RateLimitError):
            new.chat.completions.create(model=NOBODY, messages=HI)
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in psutil.wait_procs(children, timeout=10)[1]:
            child.kill()


def _start_pair(tmp_path: Path, prefix: str, database_url: str) -> tuple[Coordinator, Coordinator]:
    settings: dict[str, Any] = {"redis_url": REDIS_URL, "redis_prefix": prefix}
    one = Coordinator(tmp_path / "one", database_url=database_url, **settings)
    two = Coordinator(tmp_path / "two", database_url=database_url, **settings)
    for coordinator in (one, two):
        coordinator.workdir.mkdir()
    one.start()
    try:
        two.start()
    except BaseException:
        one.stop()
        raise
    return one, two


def test_two_coordinators_share_one_budget_through_redis(tmp_path: Path) -> None:
    prefix = "test-" + uuid.uuid4().hex[:12]
    name, url = fresh_postgres_database()
    try:
        one, two = _start_pair(tmp_path, prefix, url)
        try:
            key = _new_key(one)
            clients = [_openai(one, key), _openai(two, key)]
            for n in range(10):
                with pytest.raises(openai.NotFoundError) as missing:
                    clients[n % 2].chat.completions.create(model=NOBODY, messages=HI)
                assert missing.value.response.headers["x-ratelimit-remaining-requests"] == str(9 - n)
            for client in clients:  # one budget: each coordinator alone has admitted only 5
                with pytest.raises(openai.RateLimitError) as refused:
                    client.chat.completions.create(model=NOBODY, messages=HI)
                _assert_openai_429(refused.value.response)
            # The counts are under this network's prefix (with the cluster's own keys).
            with redis.Redis.from_url(REDIS_URL) as shared:
                written = shared.keys(f"{prefix}:*")
                assert any(k.startswith(f"{prefix}:ratelimit:".encode()) for k in written)
                shared.delete(*written)
            assert "Redis did not answer" not in one.log_text() + two.log_text()
        finally:
            one.stop()
            two.stop()
    finally:
        drop_postgres_database(name)


def test_redis_down_fails_open_to_each_coordinators_own_count(tmp_path: Path) -> None:
    """Redis unreachable: inference goes on, still limited per process, and the log says why."""
    with socket.socket() as held:  # bound, never listening: connections to it are refused
        held.bind(("127.0.0.1", 0))
        dead = f"redis://:hunter2@127.0.0.1:{held.getsockname()[1]}/0"
        coordinator = Coordinator(tmp_path, redis_url=dead).start()
        try:
            client = _openai(coordinator, _new_key(coordinator))
            for _ in range(10):
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(model=NOBODY, messages=HI)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=NOBODY, messages=HI)
            log = coordinator.log_text()
            assert "Redis did not answer" in log and "hunter2" not in log
        finally:
            coordinator.stop()
