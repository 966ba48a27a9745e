"""Every request is recorded (on SQLite and PostgreSQL), even one its coordinator crashed
serving, and no prompt or completion text is found anywhere the coordinator or provider writes:
logs, database files, table rows."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from darkbloom.coordinator.store.tables import RequestRecord
from tests.e2e.harness import MODEL, Coordinator, Provider


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Coordinator, Provider, str]]:
    workdir = tmp_path_factory.mktemp(f"records-{request.param}")
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'state' / 'coordinator.db'}"
    coordinator = Coordinator(workdir, database_url=url).start()
    provider = Provider(coordinator).start()
    try:
        yield coordinator, provider, url
    finally:
        provider.stop()
        coordinator.stop()


def _rows(url: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            result = await conn.execute(select(RequestRecord.__table__).order_by(RequestRecord.created_at))
            rows = [dict(r._mapping) for r in result]
        await engine.dispose()
        return rows
    return asyncio.run(fetch())


def test_every_request_is_recorded(db_stack: tuple[Coordinator, Provider, str]) -> None:
    coordinator, _, url = db_stack
    client = coordinator.client()
    ok = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
    reply = ok.parse()
    streamed_usage = list(client.completions.create(
        model=MODEL, prompt="Once", max_tokens=3, stream=True,
        stream_options={"include_usage": True}))[-1].usage
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=3)
    coordinator.stop()  # flushes pending writes
    coordinator.start()
    rows = _rows(url)
    assert len(rows) >= 3
    chat = next(r for r in rows if r["provider_id"] == ok.headers["x-provider-id"]
                and r["endpoint"] == "/v1/chat/completions" and r["status"] == "completed")
    assert chat["prompt_tokens"] == reply.usage.prompt_tokens  # type: ignore[union-attr]
    assert chat["completion_tokens"] == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert chat["model"] == MODEL and chat["api_key_id"] and chat["status_code"] == 200
    assert chat["ttft_ms"] is not None and chat["duration_ms"] >= chat["ttft_ms"]
    streamed = next(r for r in rows if r["endpoint"] == "/v1/completions")
    assert streamed_usage is not None
    assert streamed["stream"] is True and streamed["completion_tokens"] == streamed_usage.completion_tokens
    assert any(r["status_code"] == 400 and r["status"] == "failed" for r in rows)


def test_no_prompt_or_completion_text_is_kept(db_stack: tuple[Coordinator, Provider, str]) -> None:
    coordinator, provider, url = db_stack
    coordinator.wait_providers(1)  # the previous test restarted the coordinator
    canary = f"zebra-canary-{uuid.uuid4().hex[:10]}"
    client = coordinator.client()
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": f"Repeat this code word three times: {canary}"}])
    completion = reply.choices[0].message.content or ""
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, max_tokens=40, stream=True,
        messages=[{"role": "user", "content": f"Tell me about {canary}"}]) if c.choices)
    with pytest.raises(openai.BadRequestError):  # failures must not echo it either
        client.chat.completions.create(model=MODEL, messages=[{"role": canary, "content": canary}])
    coordinator.stop()
    coordinator.start()
    needles = [canary] + [t for t in (completion.strip(), streamed.strip()) if len(t) >= 12]
    haystacks = {"coordinator log": coordinator.log_text(), "provider log": provider.log_text(),
                 "request rows": repr(_rows(url))}
    # Anything the provider wrote to disk (its config dir: identity key, nothing else expected).
    for path in (provider.log_path.parent / "provider-config").rglob("*"):
        if path.is_file():
            haystacks[f"provider file {path.name}"] = path.read_bytes().decode("latin-1")
    if url.startswith("sqlite"):
        db_file = Path(url.split("///", 1)[1])
        for path in db_file.parent.glob(db_file.name + "*"):  # the file and its WAL
            haystacks[path.name] = path.read_bytes().decode("latin-1")
        with sqlite3.connect(db_file) as conn:
            haystacks["sql dump"] = "\n".join(conn.iterdump())
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"found request text in {where}"


def test_a_crash_leaves_an_interrupted_row(db_stack: tuple[Coordinator, Provider, str]) -> None:
    coordinator, _, url = db_stack
    coordinator.wait_providers(1)
    request_id = f"crash-{uuid.uuid4().hex[:12]}"
    stream = coordinator.client().chat.completions.create(
        model=MODEL, max_tokens=3000, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Write a very long essay about the history of the sea."}],
        extra_headers={"X-Request-ID": request_id})
    chunks = iter(stream)
    next(chunks), next(chunks)  # committed and streaming

    def mine() -> list[dict[str, Any]]:
        return [r for r in _rows(url) if r["x_request_id"] == request_id]

    deadline = time.monotonic() + 15
    while not mine():  # written at commit, off the response path
        assert time.monotonic() < deadline, "no row for a committed request"
        time.sleep(0.1)
    [row] = mine()
    assert row["status"] == "in_progress" and row["ended_at"] is None
    assert coordinator.proc is not None
    coordinator.proc.kill()  # SIGKILL mid-stream: no shutdown hook runs
    coordinator.proc.wait()
    stream.close()
    coordinator.start()
    [row] = mine()
    assert row["status"] == "interrupted" and row["error_code"] == "interrupted"
    assert row["provider_id"] and row["model"] == MODEL and row["stream"] is True
    assert row["prompt_tokens"] > 0 and row["ended_at"] is None and row["updated_at"] is not None
    assert "1 request(s) were still in progress" in coordinator.log_text()
