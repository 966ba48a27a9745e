"""Structured logs (DARKBLOOM_LOG_FORMAT=json): one JSON object per line, with the request id,
the existing filters still applied, and uvicorn's access lines formatted the same way."""

from __future__ import annotations

import io
import json
import logging

import pytest

from darkbloom.cli import logs
from darkbloom.config import CoordinatorSettings, ProviderSettings
from darkbloom.logcontext import REQUEST_ID, JsonFormatter, RequestIdFilter, WithholdExceptionMessages


def _logger(name: str = "jsonlog-test") -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(WithholdExceptionMessages())
    log = logging.getLogger(name)
    log.handlers, log.propagate, log.level = [handler], False, logging.DEBUG
    return log, out


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_object_per_line_with_the_request_id() -> None:
    log, out = _logger()
    log.info("outside any request")
    token = REQUEST_ID.set("trace-me-123")
    try:
        log.warning("about %s\nover two lines", "it")
    finally:
        REQUEST_ID.reset(token)
    first, second = _lines(out)
    assert set(first) == {"time", "level", "logger", "message", "request_id"}
    assert first["request_id"] is None and first["level"] == "INFO" and first["logger"] == "jsonlog-test"
    assert str(first["time"]).endswith("Z") and "T" in str(first["time"])
    assert second == {**second, "level": "WARNING", "message": "about it\nover two lines",
                      "request_id": "trace-me-123"}


def test_an_exception_keeps_its_frames_not_its_message() -> None:
    log, out = _logger()
    secret = "zebra-canary-key"
    try:
        {"known": 1}[secret]
    except KeyError:
        log.exception("failed")
    (line,) = _lines(out)
    assert secret not in out.getvalue()
    assert "KeyError (message withheld)" in str(line["message"]) and "Traceback" in str(line["message"])


def test_the_formatter_alone_still_withholds_an_exception_message() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("jsonlog-bare")
    log.handlers, log.propagate = [handler], False
    secret = "zebra-canary-value"
    try:
        raise ValueError(secret)
    except ValueError:
        log.exception("bare")
    assert secret not in out.getvalue()
    assert json.loads(out.getvalue())["request_id"] is None


def test_odd_text_stays_one_valid_ascii_line() -> None:
    log, out = _logger()
    log.info("surrogate %s and ü and \"quotes\"", "\ud800")
    (line,) = out.getvalue().splitlines()
    assert line.isascii() and "ü" in json.loads(line)["message"]


def test_setup_json_formats_the_root_handlers_and_uvicorn_access_lines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", root.level)
    logs.setup("info", "json")
    assert isinstance(handler.formatter, JsonFormatter)
    assert sum(isinstance(f, RequestIdFilter) for f in handler.filters) == 1
    assert sum(isinstance(f, WithholdExceptionMessages) for f in handler.filters) == 1
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "disabled", False)
    monkeypatch.setattr(access, "level", logging.INFO)
    token = REQUEST_ID.set("acc-1")
    try:  # what uvicorn's protocol logs as a response starts, inside the request's context
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/v1/chat/completions",
                    "1.1", 200)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["logger"] == "uvicorn.access" and line["request_id"] == "acc-1"
    assert line["message"] == '127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200'


def test_setup_text_keeps_the_text_format(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", root.level)
    logs.setup("info")
    assert not isinstance(handler.formatter, JsonFormatter)


def test_one_setting_for_both_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DARKBLOOM_LOG_FORMAT", "DARKBLOOM_PROVIDER_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    assert CoordinatorSettings().log_format == "text" and ProviderSettings().log_format == "text"
    monkeypatch.setenv("DARKBLOOM_LOG_FORMAT", "json")
    assert CoordinatorSettings().log_format == "json" and ProviderSettings().log_format == "json"
    monkeypatch.setenv("DARKBLOOM_PROVIDER_LOG_FORMAT", "text")
    assert ProviderSettings().log_format == "text"  # the provider's own name wins
    monkeypatch.setenv("DARKBLOOM_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError):
        CoordinatorSettings()
