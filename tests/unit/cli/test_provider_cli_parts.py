"""The pure parts of the provider commands: URLs, the picker's parsing, list rows, pidfiles,
the clock check (with a clock the test controls), benchmark.json."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

import pytest

from darkbloom.cli.doctor_cmd import Health, check_clock
from darkbloom.cli.models_cmd import rows
from darkbloom.cli.picker import _parse
from darkbloom.cli.provider_common import http_base
from darkbloom.provider.benchmark import Result, Run, load_benchmark, save_benchmark
from darkbloom.provider.engines.base import LocalModel


@pytest.mark.parametrize(("ws", "http"), [
    ("ws://127.0.0.1:8000/ws/provider", "http://127.0.0.1:8000"),
    ("wss://coord.example.com/ws/provider?x=1", "https://coord.example.com"),
    ("wss://user:secret@coord.example.com:444/ws/provider", "https://coord.example.com:444"),
    ("ws://[::1]:9000/ws/provider", "http://[::1]:9000"),
])
def test_http_base_from_the_websocket_url(ws: str, http: str) -> None:
    assert http_base(ws) == http


@pytest.mark.parametrize(("answer", "many", "picked"), [
    ("2", False, [2]), (" 3 ", False, [3]), ("1 3", False, None), ("1 3", True, [1, 3]),
    ("1,3,1", True, [1, 3]), ("0", False, None), ("4", False, None), ("x", False, None),
    ("", False, None), ("-1", False, None),
])
def test_picker_answers(answer: str, many: bool, picked: list[int] | None) -> None:
    assert _parse(answer, 3, many) == picked


def local(model_id: str, size: int, digest: str) -> LocalModel:
    return LocalModel(id=model_id, path=Path(f"/m/{model_id}.gguf"), format="gguf", size_bytes=size,
                      weight_hash=digest, aliases=(f"{model_id}-alias",))


def test_rows_mark_each_catalog_model() -> None:
    catalog = [
        {"id": "here", "size_bytes": 100, "sha256": "a" * 64, "download_url": "http://x/h.gguf"},
        {"id": "stale", "size_bytes": 100, "sha256": "b" * 64},
        {"id": "small", "size_bytes": 1000, "download_url": "http://x/s.gguf"},
        {"id": "big", "size_bytes": 1001, "download_url": "http://x/b.gguf"},
        {"id": "odd", "size_bytes": True},
    ]
    installed = [local("here", 100, "a" * 64), local("stale", 100, "c" * 64), local("own", 5, "d" * 64)]
    got = {row.id: row for row in rows(catalog, installed, budget=1200)}
    assert [got[k].status for k in ("here", "stale", "small", "big", "odd", "own")] == [
        "downloaded", "downloaded", "available", "too large", "available", "downloaded"]
    assert got["here"].hash_matches_catalog is True and got["stale"].hash_matches_catalog is False
    assert got["own"].in_catalog is False and got["small"].downloadable is True
    assert got["stale"].downloadable is False and got["odd"].size_bytes == 0
    offline = rows(None, installed, budget=1200)
    assert [row.in_catalog for row in offline] == [None, None, None]


NOW = 1_800_000_000.0


def health_at(their_offset_s: float, round_trip_s: float = 0.2) -> Health:
    return Health(status=200, date=formatdate(NOW + their_offset_s, usegmt=True),
                  asked_at=NOW - round_trip_s / 2, answered_at=NOW + round_trip_s / 2)


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (59, True), (-60, True), (62.5, False),
                                            (-90, False), (3600, False)])
def test_clock_skew_against_the_date_header(offset: float, ok: bool) -> None:
    check = check_clock(health_at(offset), clock=lambda: NOW)
    assert check.ok is ok, check.detail
    if not ok:
        assert ("behind" if offset > 0 else "ahead of") in check.detail and check.fix


def test_clock_check_without_an_answer_fails_with_a_fix() -> None:
    check = check_clock(Health(error="cannot connect"), clock=lambda: NOW)
    assert not check.ok and check.fix


def test_benchmark_file_round_trip_and_merge(tmp_path: Path) -> None:
    run = Run(prompt_tokens=50, completion_tokens=11, ttft_s=0.25, total_s=1.25)
    assert run.prefill_tps == 200 and run.decode_tps == 10
    first = Result("a", (run, run, Run(50, 11, 0.5, 2.5)))
    save_benchmark(tmp_path, first, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    save_benchmark(tmp_path, Result("b", (run,)), datetime(2030, 1, 3, tzinfo=UTC))
    saved = load_benchmark(tmp_path)
    assert saved == {"measured_at": "2030-01-03T00:00:00Z", "models": {
        "a": {"decode_tps": 10.0, "prefill_tps": 200.0, "ttft_ms": 250.0},
        "b": {"decode_tps": 10.0, "prefill_tps": 200.0, "ttft_ms": 250.0}}}


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"models": []}', '{"models": {"a": {"decode_tps": -1, "prefill_tps": 1, '
    '"ttft_ms": 1}}}', '{"models": {"a": {"decode_tps": 1e400, "prefill_tps": 1, "ttft_ms": 1}}}',
    '{"models": {"a": {"decode_tps": true, "prefill_tps": 1, "ttft_ms": 1}}}',
])
def test_a_garbled_benchmark_file_gives_nothing_usable(tmp_path: Path, text: str) -> None:
    (tmp_path / "benchmark.json").write_text(text)
    saved = load_benchmark(tmp_path)
    assert saved is None or saved["models"] == {}


def test_a_run_without_tokens_after_the_first_has_no_decode_speed() -> None:
    assert Run(10, 1, 0.1, 0.1).decode_tps == 0.0 and Run(10, 0, 0.0, 0.0).prefill_tps == 0.0
