"""Coordinator metrics (coordinator/metrics.py): the scrape-time collector over a real scheduler,
the per-request observer, reconnects, rate-limit rejections through the real error handler, and
the HTTP middleware (route templates, not raw paths; streamed bodies pass through unbuffered)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message

from darkbloom.coordinator.api import errors
from darkbloom.coordinator.api.ratelimit import INFERENCE, RateLimits, Tier
from darkbloom.coordinator.metrics import UNMATCHED, Metrics, MetricsMiddleware, dispatch_result
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.store.requests_log import RequestOutcome
from darkbloom.errors import TooManyRequests
from darkbloom.inference.catalog import Catalog
from tests.unit.conftest import MakeProvider


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the Prometheus text, parsed as a scraper would: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(metrics.prometheus_text().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def outcome(**fields: Any) -> RequestOutcome:
    base: dict[str, Any] = dict(id="r1", endpoint="/v1/chat/completions", model="m", stream=False,
                                created_at=datetime.now(UTC))
    return RequestOutcome(**{**base, **fields})


class FakeScheduler:
    """What the collector reads of a scheduler, with routability and queues set by the test."""

    def __init__(self) -> None:
        self.providers: dict[str, Any] = {}
        self.unroutable: set[str] = set()
        self.queues: dict[str, int] = {}

    def routable(self, provider: Any) -> bool:
        return provider.id not in self.unroutable

    def queue_depth(self, model: str) -> int:
        return self.queues.get(model, 0)


def test_gauges_are_read_off_the_scheduler_when_scraped(make_provider: MakeProvider) -> None:
    scheduler = FakeScheduler()
    metrics = Metrics(SimpleNamespace(scheduler=scheduler, catalog=Catalog()))
    assert value(metrics, "providers_online", trust_level="none", routable="true") == 0
    a, b, c = make_provider("a", max_concurrency=2), make_provider("b"), make_provider("c")
    b.trust_level = c.trust_level = "self_signed"
    scheduler.unroutable.add("c")
    a.in_flight, b.in_flight = 2, 1
    scheduler.providers = {p.id: p for p in (a, b, c)}
    scheduler.queues["m"] = 3
    assert value(metrics, "providers_online", trust_level="none", routable="true") == 1
    assert value(metrics, "providers_online", trust_level="self_signed", routable="true") == 1
    assert value(metrics, "providers_online", trust_level="self_signed", routable="false") == 1
    assert value(metrics, "providers_online", trust_level="hardware", routable="false") == 0
    assert value(metrics, "inference_in_flight") == 3
    assert value(metrics, "provider_slots") == 4
    # A queue per model anyone serves or the catalog knows, zero while nobody waits.
    assert value(metrics, "inference_queue_depth", model="m") == 3
    assert value(metrics, "inference_queue_depth", model="smollm2-135m") == 0
    del scheduler.providers["a"]
    assert value(metrics, "inference_in_flight") == 1  # no bookkeeping to forget: read each time


def test_the_real_scheduler_is_read(make_provider: MakeProvider) -> None:
    scheduler = Scheduler(queue_max=10, queue_timeout_s=1.0, min_trust="none")
    metrics = Metrics(SimpleNamespace(scheduler=scheduler))
    providers = [make_provider("a"), make_provider("b")]
    providers[1].trust_level = "self_signed"
    for p in providers:
        scheduler.add(p)
    for p in providers:
        flag = "true" if scheduler.routable(p) else "false"
        assert value(metrics, "providers_online", trust_level=p.trust_level, routable=flag) == 1
    assert value(metrics, "inference_queue_depth", model="m") == 0
    assert value(metrics, "provider_slots") == 2


def test_a_scrape_before_the_lifespan_or_over_a_broken_scheduler_still_answers() -> None:
    assert value(Metrics(SimpleNamespace()), "providers_online", trust_level="none",
                 routable="true") == 0

    class Broken:
        @property
        def providers(self) -> dict[str, Any]:
            raise RuntimeError("being rewritten")

    metrics = Metrics(SimpleNamespace(scheduler=Broken()))
    assert value(metrics, "inference_in_flight") == 0


def test_registries_are_per_app() -> None:
    one, two = Metrics(), Metrics()
    one.observe_http("GET", "/health", 200, 1.0)
    assert value(one, "http_requests_total", method="GET", path="/health", status="200") == 1
    assert value(two, "http_requests_total", method="GET", path="/health", status="200") == 0


def test_a_committed_request_counts_tokens_times_and_retries() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(status="completed", status_code=200, prompt_tokens=11,
                                    completion_tokens=7, ttft_ms=120.0, duration_ms=900.0, attempts=2))
    metrics.observe_outcome(outcome(status="cancelled", status_code=499, completion_tokens=2,
                                    ttft_ms=80.0, duration_ms=300.0, attempts=1, endpoint="/v1/messages"))
    assert value(metrics, "inference_tokens_total", model="m", kind="prompt") == 11
    assert value(metrics, "inference_tokens_total", model="m", kind="completion") == 9
    assert value(metrics, "inference_ttft_ms_count", model="m", endpoint="/v1/chat/completions") == 1
    assert value(metrics, "inference_ttft_ms_count", model="m", endpoint="/v1/messages") == 1
    assert value(metrics, "inference_ttft_ms_sum", model="m", endpoint="/v1/chat/completions") == 120
    assert value(metrics, "inference_duration_ms_count", model="m", endpoint="/v1/messages") == 1
    assert value(metrics, "inference_retries_total", model="m") == 1
    assert value(metrics, "inference_dispatches_total", result="completed") == 1
    assert value(metrics, "inference_dispatches_total", result="cancelled") == 1


def test_a_request_that_never_reached_a_provider_counts_only_its_result() -> None:
    metrics = Metrics()
    metrics.observe_outcome(outcome(status="failed", status_code=503, model="m", duration_ms=5.0))
    metrics.observe_outcome(outcome(status="failed", status_code=400, model="", duration_ms=1.0))
    assert value(metrics, "inference_dispatches_total", result="no_provider") == 1
    assert value(metrics, "inference_dispatches_total", result="rejected") == 1
    assert not any(name.startswith(("inference_tokens", "inference_ttft_ms_count"))
                   for name, _ in samples(metrics))


@pytest.mark.parametrize(("fields", "result"), [
    (dict(status="completed", status_code=200, attempts=1), "completed"),
    (dict(status="cancelled", status_code=499, attempts=0), "cancelled"),
    (dict(status="failed", status_code=502, attempts=1), "failed"),
    (dict(status="failed", status_code=503, attempts=0), "no_provider"),
    (dict(status="failed", status_code=504, attempts=0), "timeout"),
    (dict(status="failed", status_code=502, attempts=0), "provider_error"),
    (dict(status="failed", status_code=402, attempts=0), "rejected"),
])
def test_dispatch_results(fields: dict[str, Any], result: str) -> None:
    assert dispatch_result(outcome(**fields)) == result


def test_reconnects_are_registrations_of_an_identity_seen_before(make_provider: MakeProvider) -> None:
    metrics = Metrics()
    keyed, again, other = make_provider("a"), make_provider("b"), make_provider("c")
    keyed.identity_key = again.identity_key = "key-1"
    other.token_id = "token-9"
    anonymous = make_provider("d")
    for p in (keyed, other, anonymous, again, anonymous):
        metrics.registered(p)
    assert value(metrics, "provider_registrations_total") == 5
    assert value(metrics, "provider_reconnects_total") == 1


async def test_rate_limit_rejections_by_tier_through_the_error_handler() -> None:
    """The real limiter's refusal, through the real handler: the tier is read off its error."""
    limits = RateLimits([Tier(INFERENCE, 0.5, 1)])
    app = FastAPI()
    app.state.metrics = metrics = Metrics()
    errors.install(app)

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, str]:
        await limits.hit(INFERENCE, "account", "acct-1")
        return {"ok": "yes"}

    @app.post("/v1/other")
    async def other() -> None:
        raise TooManyRequests("slow down")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.post("/v1/chat/completions")).status_code == 200
        refused = await client.post("/v1/chat/completions")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await client.post("/v1/other")).status_code == 429
    assert value(metrics, "rate_limit_rejections_total", tier="inference") == 1
    assert value(metrics, "rate_limit_rejections_total", tier="other") == 1
    assert value(metrics, "rate_limit_rejections_total", tier="financial") == 0


def _app(metrics: Metrics) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/v1/things/{item}")
    async def thing(item: str) -> dict[str, str]:
        return {"item": item}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def test_http_requests_are_labelled_by_route_template() -> None:
    metrics = Metrics()
    transport = httpx.ASGITransport(app=_app(metrics), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for item in ("id-1", "id-2", "id-3"):
            assert (await client.get(f"/v1/things/{item}")).status_code == 200
        assert (await client.get("/v1/nowhere/secret-id")).status_code == 404
        assert (await client.post("/v1/things/id-4")).status_code == 405
        assert (await client.get("/boom")).status_code == 500
        assert (await client.request("BREW", "/v1/things/x")).status_code == 405
    found = samples(metrics)
    assert value(metrics, "http_requests_total", method="GET", path="/v1/things/{item}", status="200") == 3
    assert value(metrics, "http_requests_total", method="GET", path=UNMATCHED, status="404") == 1
    assert value(metrics, "http_requests_total", method="POST", path="/v1/things/{item}", status="405") == 1
    assert value(metrics, "http_requests_total", method="GET", path="/boom", status="500") == 1
    assert value(metrics, "http_requests_total", method="OTHER", path="/v1/things/{item}", status="405") == 1
    assert value(metrics, "http_request_duration_ms_count", method="GET", path="/v1/things/{item}") == 3
    text = json.dumps([list(labels) for _, labels in found])
    assert "id-1" not in text and "secret-id" not in text


async def test_a_streamed_body_passes_through_unbuffered_and_is_timed_to_its_end() -> None:
    """The generator's second chunk waits until the client has received the first: a middleware
    that buffered would never let it, and the test would time out."""
    metrics = Metrics()
    app = FastAPI()
    first_seen = asyncio.Event()
    after_first: list[bool] = []

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            yield b"one"
            await first_seen.wait()
            yield b"two"
        return StreamingResponse(chunks())

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    received: list[Message] = []

    async def send(message: Message) -> None:
        received.append(message)
        if message["type"] == "http.response.body" and message.get("body") == b"one":
            after_first.append(value(metrics, "http_requests_total", method="GET", path="/stream",
                                     status="200") == 0)
            first_seen.set()

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/stream", "raw_path": b"/stream", "query_string": b"",
             "root_path": "", "headers": [], "client": ("127.0.0.1", 1), "server": ("t", 80)}
    await asyncio.wait_for(app(scope, receive, send), 10)
    bodies = [m.get("body") for m in received if m["type"] == "http.response.body"]
    assert b"one" in bodies and b"two" in bodies
    assert after_first == [True]  # not counted until the body ended
    assert value(metrics, "http_requests_total", method="GET", path="/stream", status="200") == 1


def test_the_json_snapshot() -> None:
    metrics = Metrics(SimpleNamespace())
    metrics.observe_http("POST", "/v1/chat/completions", 200, 42.0)
    snap = json.loads(json.dumps(metrics.snapshot()))
    assert snap["object"] == "metrics" and isinstance(snap["generated_at"], int)
    requests = snap["metrics"]["http_requests_total"]
    assert requests["type"] == "counter"
    assert requests["samples"] == [{"labels": {"method": "POST", "path": "/v1/chat/completions",
                                               "status": "200"}, "value": 1.0}]
    duration = snap["metrics"]["http_request_duration_ms"]
    assert duration["type"] == "histogram"
    series = duration["samples"][0]
    assert series["count"] == 1 and series["sum"] == 42.0 and series["buckets"]["50.0"] == 1
    assert series["buckets"]["+Inf"] == 1 and series["buckets"]["25.0"] == 0
    assert snap["metrics"]["providers_online"]["samples"][0]["value"] == 0
