"""A provider that misreports usage: the record keeps the coordinator's prompt count and a
completion count within the cap and the stream's evidence, and the coordinator says so in its
log, naming the provider, under the request's id."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from darkbloom.coordinator.store.tables import RequestRecord
from tests.e2e.harness import MODEL, Coordinator, Provider

# Loaded by the provider's interpreter at start (sitecustomize): every inference_complete it sends
# reports the usage written in the file DARKBLOOM_TEST_REPORTED_USAGE names ("prompt,completion").
LIAR = '''
import os
from darkbloom.protocol.frames import InferenceComplete, Usage
from darkbloom.provider import serving

_init = serving.RequestServer.__init__

def _lying_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    send = self.send

    async def lying_send(frame):
        if isinstance(frame, InferenceComplete):
            with open(os.environ["DARKBLOOM_TEST_REPORTED_USAGE"]) as f:
                prompt, completion = map(int, f.read().split(","))
            usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
            frame = frame.model_copy(update={"usage": usage})
        await send(frame)

    self.send = lying_send

serving.RequestServer.__init__ = _lying_init
'''
LONG: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a very long essay about the history of the sea."}]


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Path]]:
    workdir = tmp_path_factory.mktemp("liar")
    (workdir / "liar").mkdir()
    (workdir / "liar" / "sitecustomize.py").write_text(LIAR)
    reported = workdir / "reported-usage"
    reported.write_text("0,0")
    coordinator = Coordinator(workdir).start()
    provider = Provider(coordinator)
    provider.env["PYTHONPATH"] = os.pathsep.join([str(workdir / "liar"), os.environ.get("PYTHONPATH", "")])
    provider.env["DARKBLOOM_TEST_REPORTED_USAGE"] = str(reported)
    provider.start()
    try:
        yield coordinator, reported
    finally:
        provider.stop()
        coordinator.stop()


def _row(coordinator: Coordinator, x_request_id: str) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{coordinator.workdir / 'state' / 'coordinator.db'}"

    async def fetch() -> list[dict[str, Any]]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            result = await conn.execute(select(RequestRecord.__table__)
                                        .where(RequestRecord.x_request_id == x_request_id))
            rows = [dict(r._mapping) for r in result]
        await engine.dispose()
        return rows

    deadline = time.monotonic() + 15
    while True:
        rows = asyncio.run(fetch())
        if rows and rows[0]["status"] != "in_progress":
            return rows[0]
        assert time.monotonic() < deadline, "the request was never recorded as ended"
        time.sleep(0.1)


def _warnings(coordinator: Coordinator, x_request_id: str) -> list[str]:
    return [line for line in coordinator.log_text().splitlines()
            if "reported usage out of bounds" in line and f"[req={x_request_id}]" in line]


def test_an_inflated_report_is_cut_to_the_cap_and_our_prompt_count(liar: tuple[Coordinator, Path]) -> None:
    coordinator, reported = liar
    reported.write_text(f"{2**40},{2**40}")
    reply = coordinator.client().chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"X-Request-ID": "inflated-1"})
    body = reply.parse()  # the body's usage is the engine's own count, not the lie
    assert body.usage is not None and body.usage.completion_tokens <= 5
    row = _row(coordinator, "inflated-1")
    assert row["status"] == "completed"
    assert row["prompt_tokens"] == body.usage.prompt_tokens  # the coordinator's own count
    assert row["completion_tokens"] == 5  # the cap, not 2**40
    [warning] = _warnings(coordinator, "inflated-1")
    assert reply.headers["x-provider-id"] in warning and reply.headers["x-inference-job-id"] in warning
    assert f"completion_tokens {2**40} > cap 5" in warning


def test_a_stream_cannot_claim_it_generated_nothing(liar: tuple[Coordinator, Path]) -> None:
    coordinator, reported = liar
    reported.write_text("0,0")
    stream = coordinator.client().chat.completions.create(
        model=MODEL, max_tokens=200, temperature=0, stream=True, messages=LONG,
        stream_options={"include_usage": True}, extra_headers={"X-Request-ID": "deflated-1"})
    chunks = list(stream)
    deltas = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert deltas >= 60  # enough events that the floor is above zero
    row = _row(coordinator, "deflated-1")
    assert row["completion_tokens"] >= (deltas - 16) // 8 > 0
    assert row["completion_tokens"] <= 200 and row["prompt_tokens"] > 0
    [warning] = _warnings(coordinator, "deflated-1")
    assert "completion_tokens 0 <" in warning
