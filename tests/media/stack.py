"""A real coordinator and a real `darkbloom serve` provider serving Whisper tiny.en (from its wheel)
and the image TEST DOUBLE (tests/media/tiny_pipeline.py), registered only in this stack's own
catalog file: what the media tests and the media bench run against."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import Coordinator, Provider
from tests.media.tiny_pipeline import TEST_DOUBLE_ID, build_tiny_pipeline, catalog_entry

WHISPER = "whisper-tiny-en"


@contextmanager
def media_stack(work: Path, threads: int = 2, quiet: bool = False,
                **settings: Any) -> Iterator[tuple[Coordinator, Provider]]:
    """Both started, and stopped at the end; ``settings`` are the coordinator's
    (DARKBLOOM_<NAME>), ``quiet`` logs warnings only."""
    pipeline = build_tiny_pipeline(work / "provider-config" / "models" / TEST_DOUBLE_ID)
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps([catalog_entry(pipeline, work)]))
    if quiet:
        settings.setdefault("log_level", "warning")
    coordinator = Coordinator(work, catalog_file=catalog, **settings).start()
    provider = Provider(coordinator)
    provider.env["DARKBLOOM_PROVIDER_MODELS"] = json.dumps([WHISPER, TEST_DOUBLE_ID])
    provider.env["DARKBLOOM_PROVIDER_THREADS"] = str(threads)
    if quiet:
        provider.env["DARKBLOOM_PROVIDER_LOG_LEVEL"] = "warning"
    provider.start(wait=False)
    try:
        deadline = time.monotonic() + 180
        served: set[str] = set()
        while time.monotonic() < deadline and served != {WHISPER, TEST_DOUBLE_ID}:
            assert provider.proc is not None and provider.proc.poll() is None, provider.log_text()
            data = httpx.get(f"{coordinator.base_url}/v1/models", timeout=5).json()["data"]
            served = {m["id"] for m in data if m["metadata"]["provider_count"]}
            time.sleep(0.2)
        assert served == {WHISPER, TEST_DOUBLE_ID}, provider.log_text()[-3000:]
        yield coordinator, provider
    finally:
        provider.stop()
        coordinator.stop()
