"""Prometheus metrics for one coordinator app (api.md §10; names and labels in docs/observability.md).

Each app has its own ``CollectorRegistry`` (tests and tools build several apps in one process, and
the global registry would mix their counts). Counters and histograms are updated where things
happen: ``MetricsMiddleware`` for HTTP, ``observe_outcome`` when a request's row is written,
``registered`` for provider (re)connections, ``rate_limited`` in the error handler. Gauges (queue
depth, in-flight, providers online) are read off the scheduler at scrape time by ``LiveCollector``,
so no code path has to remember to keep them in step.

Label values are bounded: route templates (never raw paths), a fixed set of methods, models only
after the catalog resolved them, trust levels and results from fixed sets.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkbloom.coordinator.store.requests_log import RequestOutcome

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # Prometheus text 0.0.4 (api.md §10)
TRUST_LEVELS = ("none", "self_signed", "hardware")
RATE_LIMIT_TIERS = ("financial", "inference", "device")
_TIER_IN_MESSAGE = re.compile(r"too many (\w+) requests")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"  # no route: a 404 or a redirect; never the raw path
# Milliseconds: api.md §10 names the HTTP histogram in ms, and the inference ones follow it.
HTTP_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000,
                   300000)
TTFT_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)
DURATION_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000,
                       600000, 1800000)
_SEEN_PROVIDERS_MAX = 100_000  # identities remembered for reconnects; the oldest go first


class Metrics:
    """The metrics of one app. ``state`` is the app's ``app.state``: the live collector reads the
    scheduler and catalog from it when scraped (both appear only once the lifespan has run)."""

    def __init__(self, state: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests", "HTTP requests by method, route template and status.",
            ["method", "path", "status"], registry=r)
        self.http_duration = Histogram(
            "http_request_duration_ms", "HTTP request duration to the end of the body, in ms.",
            ["method", "path"], buckets=HTTP_BUCKETS_MS, registry=r)
        self.tokens = Counter(
            "inference_tokens", "Tokens billed, by model and kind (prompt or completion).",
            ["model", "kind"], registry=r)
        self.ttft = Histogram(
            "inference_ttft_ms", "Time to the first chunk (retries included), in ms.",
            ["model", "endpoint"], buckets=TTFT_BUCKETS_MS, registry=r)
        self.duration = Histogram(
            "inference_duration_ms", "Inference request duration, committed requests, in ms.",
            ["model", "endpoint"], buckets=DURATION_BUCKETS_MS, registry=r)
        self.retries = Counter(
            "inference_retries", "Extra dispatch attempts a committed request needed.",
            ["model"], registry=r)
        self.dispatches = Counter(
            "inference_dispatches", "Inference requests by how they ended.", ["result"], registry=r)
        self.reconnects = Counter(
            "provider_reconnects", "Registrations of a provider identity seen before by this process.",
            registry=r)
        self.registrations = Counter(
            "provider_registrations", "Provider registrations.", registry=r)
        self.rate_limited = Counter(
            "rate_limit_rejections", "Requests refused with 429 rate_limit_exceeded, by tier.",
            ["tier"], registry=r)
        self._seen: dict[str, None] = {}  # insertion-ordered: a bounded "seen before" set
        if state is not None:
            r.register(LiveCollector(state))

    # --- hooks ----------------------------------------------------------------------------

    def observe_http(self, method: str, path: str, status: int, duration_ms: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.http_requests.labels(method, path, str(status)).inc()
        self.http_duration.labels(method, path).observe(duration_ms)

    def observe_outcome(self, outcome: RequestOutcome) -> None:
        """One inference request ended (pipeline.py, as its row is written)."""
        self.dispatches.labels(dispatch_result(outcome)).inc()
        if outcome.attempts <= 0 or not outcome.model:
            return  # never committed to a provider: no tokens, no time to first chunk
        model, endpoint = outcome.model, outcome.endpoint
        self.tokens.labels(model, "prompt").inc(max(outcome.prompt_tokens, 0))
        self.tokens.labels(model, "completion").inc(max(outcome.completion_tokens, 0))
        if outcome.ttft_ms is not None:
            self.ttft.labels(model, endpoint).observe(outcome.ttft_ms)
        self.duration.labels(model, endpoint).observe(outcome.duration_ms)
        if outcome.attempts > 1:
            self.retries.labels(model).inc(outcome.attempts - 1)

    def registered(self, provider: Any) -> None:
        """A provider registered: a reconnect when its identity key (else its token) registered
        before in this process. Anonymous providers have neither and never count as one."""
        self.registrations.inc()
        identity = getattr(provider, "identity_key", None) or getattr(provider, "token_id", None)
        if not identity:
            return
        key = str(identity)
        if key in self._seen:
            self.reconnects.inc()
            del self._seen[key]  # re-inserted below: most recently seen last
        elif len(self._seen) >= _SEEN_PROVIDERS_MAX:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = None

    def rate_limit_rejected(self, error: Exception) -> None:
        """A 429 ``rate_limit_exceeded`` went out (api/errors.py). Its tier: the error's ``tier``
        attribute where the limiter sets one, else the tier its message names (ratelimit.py's
        "too many <tier> requests"), else ``other``."""
        tier = getattr(error, "tier", None)
        if tier is None:
            found = _TIER_IN_MESSAGE.match(str(getattr(error, "message", "")))
            tier = found.group(1) if found else None
        self.rate_limited.labels(tier if tier in RATE_LIMIT_TIERS else "other").inc()

    # --- exposition -----------------------------------------------------------------------

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """Every metric as JSON: counters and gauges as values, histograms as count, sum and
        cumulative buckets (``le`` → count)."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            entry: dict[str, Any] = {"type": family.type, "help": family.documentation, "samples": []}
            name = family.name + ("_total" if family.type == "counter" else "")
            if family.type == "histogram":
                entry["samples"] = _histogram_samples(family)
            else:
                entry["samples"] = [{"labels": dict(s.labels), "value": s.value}
                                    for s in family.samples if s.name == name]
            out[name] = entry
        return {"object": "metrics", "generated_at": int(time.time()), "metrics": out}


def _histogram_samples(family: Metric) -> list[dict[str, Any]]:
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        entry = series.setdefault(key, {"labels": labels, "count": 0, "sum": 0.0, "buckets": {}})
        if sample.name.endswith("_bucket"):
            entry["buckets"][sample.labels["le"]] = sample.value
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
    return list(series.values())


def dispatch_result(outcome: RequestOutcome) -> str:
    """``inference_dispatches_total{result}``: completed, cancelled (the consumer left), failed
    (the provider failed after the first chunk, or the coordinator cut the stream), no_provider
    (503), timeout (504), provider_error (other 5xx before a first chunk), rejected (4xx: the
    request was refused before dispatch, or a consumer-blind provider refused it)."""
    if outcome.status in ("completed", "cancelled"):
        return outcome.status
    if outcome.attempts > 0:
        return "failed"
    code = outcome.status_code
    if code == 503:
        return "no_provider"
    if code == 504:
        return "timeout"
    if 400 <= code < 500:
        return "rejected"
    return "provider_error"


class LiveCollector(Collector):
    """Gauges computed from the scheduler at scrape time. Reads only; a scheduler that is not
    there yet (before the lifespan) or lacks a method yields zeros, never a failed scrape."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        try:
            return self._families(self._read())
        except Exception as exc:  # a scrape must never take the endpoint down
            log.warning("metrics: could not read the scheduler (%s)", type(exc).__name__)
            return self._families({})

    def _read(self) -> dict[str, Any]:
        scheduler = getattr(self.state, "scheduler", None)
        if scheduler is None:
            return {}
        providers = list(getattr(scheduler, "providers", {}).values())
        routable: Callable[[Any], bool] = getattr(scheduler, "routable", lambda p: True)
        online: dict[tuple[str, str], int] = {}
        in_flight = slots = 0
        models: set[str] = set()
        for p in providers:
            level = p.trust_level if p.trust_level in TRUST_LEVELS else "none"
            key = (level, "true" if routable(p) else "false")
            online[key] = online.get(key, 0) + 1
            in_flight += int(getattr(p, "in_flight", 0))
            slots += int(getattr(p, "max_concurrency", 0))
            models.update(getattr(p, "models", ()))
        catalog = getattr(self.state, "catalog", None)
        models.update(m.id for m in getattr(catalog, "models", ()))
        depth = getattr(scheduler, "queue_depth", None)
        queues = {m: int(depth(m)) for m in sorted(models)} if depth is not None else {}
        link = getattr(self.state, "link", None)
        crossed = {"sent": int(getattr(link, "requests_sent", 0)),
                   "carried": int(getattr(link, "requests_carried", 0))}
        return {"online": online, "in_flight": in_flight, "slots": slots, "queues": queues,
                "crossed": crossed}

    def _families(self, read: dict[str, Any]) -> Iterator[Metric]:
        online = GaugeMetricFamily("providers_online", "Connected providers by trust level and "
                                   "whether they can be routed to now.",
                                   labels=["trust_level", "routable"])
        counts: dict[tuple[str, str], int] = read.get("online", {})
        for level in TRUST_LEVELS:
            for flag in ("true", "false"):
                online.add_metric([level, flag], counts.get((level, flag), 0))
        yield online
        yield GaugeMetricFamily("inference_in_flight", "Requests being served by providers now.",
                                value=read.get("in_flight", 0))
        yield GaugeMetricFamily("provider_slots", "Concurrent request slots of connected providers.",
                                value=read.get("slots", 0))
        queue = GaugeMetricFamily("inference_queue_depth", "Requests waiting for a slot, by model.",
                                  labels=["model"])
        for model, depth in read.get("queues", {}).items():
            queue.add_metric([model], depth)
        yield queue
        crossed = CounterMetricFamily(
            "cluster_requests", "Requests that crossed to another coordinator (scale-out): sent to "
            "a provider another one holds, or carried here for another one.", labels=["direction"])
        for direction in ("sent", "carried"):
            crossed.add_metric([direction], read.get("crossed", {}).get(direction, 0))
        yield crossed


class MetricsMiddleware:
    """Counts every HTTP request by route template and times it to the end of its body. Pure
    ASGI: a streamed response passes through message by message, never buffered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            # An exception with no response yet becomes the outer handler's 500.
            route = getattr(scope.get("route"), "path", None)
            self.metrics.observe_http(scope.get("method", "GET"), route or UNMATCHED, status or 500,
                                      (time.perf_counter() - started) * 1000)
