"""Metrics and structured logs on a real coordinator and a real provider (api.md §10): chat through
the stock openai SDK, streamed and not, then the admin's Prometheus text parsed as a scraper would,
the JSON snapshot, who may read them, /metrics only when enabled, a provider reconnect, and JSON
log lines that carry the request id and never the prompt."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import MODEL, Coordinator, Provider

ADMIN_KEY = "dba-metrics-e2e-admin-key-0123456789abcdef"
PROMPT_CANARY = "periwinkle-metrics-canary-4417"  # must appear in no log line
REQUEST_ID = "metrics-e2e-req-1"
NATIVE = re.compile(r"(llama|ggml|gguf)\w*[: ]")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Provider]]:
    coordinator = Coordinator(tmp_path_factory.mktemp("metrics"), admin_key=ADMIN_KEY,
                              log_format="json").start()
    provider = Provider(coordinator)
    provider.env["DARKBLOOM_LOG_FORMAT"] = "json"  # the coordinator's setting serves the provider
    provider.start()
    try:
        yield coordinator, provider
    finally:
        provider.stop()
        coordinator.stop()


def scrape(coordinator: Coordinator, path: str = "/v1/admin/metrics?format=prom",
           key: str | None = ADMIN_KEY) -> Samples:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{coordinator.base_url}{path}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over the labels not given."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == want for k, want in labels.items()))


def wait_for(coordinator: Coordinator, check: str, want: float, **labels: str) -> Samples:
    """Per-request metrics are taken as the request settles, just after its response."""
    deadline = time.monotonic() + 20
    while True:
        samples = scrape(coordinator)
        if total(samples, check, **labels) >= want or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_metrics_after_real_requests(stack: tuple[Coordinator, Provider]) -> None:
    coordinator, _ = stack
    client = coordinator.client()
    messages = [{"role": "user", "content": f"Say hello to {PROMPT_CANARY}."}]
    usages = []
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,  # type: ignore[arg-type]
                                           extra_headers={"X-Request-ID": REQUEST_ID})
    usages.append(whole.usage)
    for _ in range(2):
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
    # Two ids in the same route: one label, the template.
    for rid in ("req-aaaa-1", "req-bbbb-2"):
        got = httpx.get(f"{coordinator.base_url}/v1/receipts/{rid}", timeout=10,
                        headers={"Authorization": f"Bearer {coordinator.api_key}"})
        assert got.status_code == 404

    samples = wait_for(coordinator, "inference_dispatches_total", 3, result="completed")
    assert value(samples, "http_requests_total", method="POST", path="/v1/chat/completions",
                 status="200") == 3
    assert value(samples, "http_requests_total", method="GET", path="/v1/receipts/{request_id}",
                 status="404") == 2
    assert not any("req-aaaa-1" in v for _, labels in samples for _, v in labels)
    assert value(samples, "http_request_duration_ms_count", method="POST",
                 path="/v1/chat/completions") == 3
    assert value(samples, "inference_dispatches_total", result="completed") == 3
    assert value(samples, "inference_ttft_ms_count", model=MODEL, endpoint="/v1/chat/completions") == 3
    assert value(samples, "inference_duration_ms_count", model=MODEL,
                 endpoint="/v1/chat/completions") == 3
    assert all(u is not None for u in usages)
    assert value(samples, "inference_tokens_total", model=MODEL, kind="prompt") == sum(
        u.prompt_tokens for u in usages if u)
    assert value(samples, "inference_tokens_total", model=MODEL, kind="completion") == sum(
        u.completion_tokens for u in usages if u)
    # The harness's provider: attested with its own key, routable once it passed its challenge.
    assert total(samples, "providers_online") == 1
    assert total(samples, "providers_online", routable="true") == 1
    assert value(samples, "providers_online", trust_level="self_signed", routable="true") == 1
    assert value(samples, "provider_slots") == 1
    assert value(samples, "inference_in_flight") == 0
    assert value(samples, "inference_queue_depth", model=MODEL) == 0
    assert value(samples, "provider_registrations_total") == 1
    assert value(samples, "provider_reconnects_total") == 0


def test_json_snapshot_and_who_may_read_it(stack: tuple[Coordinator, Provider]) -> None:
    coordinator, _ = stack
    url = f"{coordinator.base_url}/v1/admin/metrics"
    snap = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert snap.status_code == 200 and snap.headers["content-type"].startswith("application/json")
    body = snap.json()
    assert body["object"] == "metrics"
    requests = body["metrics"]["http_requests_total"]
    assert requests["type"] == "counter" and any(
        s["labels"]["path"] == "/v1/chat/completions" for s in requests["samples"])
    assert body["metrics"]["inference_ttft_ms"]["type"] == "histogram"
    assert body["metrics"]["providers_online"]["type"] == "gauge"

    consumer = httpx.get(url, headers={"Authorization": f"Bearer {coordinator.api_key}"}, timeout=10)
    assert consumer.status_code == 403
    assert consumer.json()["error"]["type"] == "forbidden"
    assert httpx.get(url, timeout=10).status_code == 401
    bad_format = httpx.get(f"{url}?format=xml", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                           timeout=10)
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "format"
    # Off by default: /metrics is not there, in the OpenAI error shape of any unknown route.
    hidden = httpx.get(f"{coordinator.base_url}/metrics", timeout=10)
    assert hidden.status_code == 404 and hidden.json()["error"]["type"] == "not_found"


def test_a_provider_reconnect_is_counted(stack: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = stack
    provider.stop()
    coordinator.wait_providers(0)
    provider.start()
    samples = scrape(coordinator)
    assert value(samples, "provider_registrations_total") == 2
    assert value(samples, "provider_reconnects_total") == 1
    assert total(samples, "providers_online") == 1


def _json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_json_logs_carry_the_request_id_and_no_prompt(stack: tuple[Coordinator, Provider]) -> None:
    coordinator, provider = stack
    text = coordinator.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    # Every line Python logs is one JSON object; llama.cpp (the coordinator's tokenizer) writes
    # a few native lines to stderr outside logging.
    assert all(line.startswith("{") or NATIVE.match(line) for line in lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    ours = [r for r in records if r["request_id"] == REQUEST_ID]
    assert any(r["logger"] == "uvicorn.access" and "/v1/chat/completions" in str(r["message"])
               for r in ours)
    assert any(str(r["logger"]).startswith("darkbloom.") for r in ours)
    # Every access line names its request.
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert access and all(r["request_id"] for r in access)
    provider_records = _json_lines(provider.log_path)
    assert provider_records and any(r["request_id"] == REQUEST_ID for r in provider_records)
    for path in (coordinator.log_path, provider.log_path):
        assert PROMPT_CANARY not in path.read_text()


def test_public_metrics_when_enabled(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path, metrics_public="true").start()
    try:
        samples = scrape(coordinator, "/metrics", key=None)
        assert total(samples, "providers_online") == 0
        assert value(samples, "inference_queue_depth", model=MODEL) == 0
        # The scrape itself shows up on the next one, under its route.
        again = scrape(coordinator, "/metrics", key=None)
        assert value(again, "http_requests_total", method="GET", path="/metrics", status="200") >= 1
    finally:
        coordinator.stop()
