"""The request-id log filter: every record carries the X-Request-ID of the request it is about."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging

import pytest

from darkbloom.cli import logs
from darkbloom.logcontext import FORMAT, REQUEST_ID, RequestIdFilter, WithholdExceptionMessages, sanitize


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    parent = logging.getLogger("logcontext-test")
    parent.handlers, parent.propagate, parent.level = [handler], False, logging.DEBUG
    return logging.getLogger("logcontext-test.child"), out  # a child: records propagate up


def test_records_carry_the_request_id_or_a_dash() -> None:
    log, out = _logger()
    log.info("outside any request")
    token = REQUEST_ID.set("trace-me-123")
    try:
        log.info("about the request")
    finally:
        REQUEST_ID.reset(token)
    log.info("after it")
    lines = out.getvalue().splitlines()
    assert "[req=-]" in lines[0] and "[req=trace-me-123]: about the request" in lines[1]
    assert "[req=-]" in lines[2]


async def test_the_id_follows_the_request_task_and_its_children_only() -> None:
    log, out = _logger()

    async def request(rid: str) -> None:
        REQUEST_ID.set(rid)
        await asyncio.sleep(0)
        await asyncio.create_task(asyncio.to_thread(log.info, "background for %s", rid))
        log.info("handled %s", rid)

    await asyncio.gather(request("a-1"), request("b-2"))
    log.info("the test's own line")
    for line in out.getvalue().splitlines()[:-1]:
        rid = line.rsplit(" ", 1)[-1]
        assert f"[req={rid}]" in line
    assert "[req=-]" in out.getvalue().splitlines()[-1]


@pytest.mark.parametrize("value", ["trace-me-123", "a", "A.b_c:d-9", "x" * 64])
def test_sane_ids_pass(value: str) -> None:
    assert sanitize(value) == value


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a\nb", "abc\n", "%(message)s", "ü", "[req=x]",
                                   None, 5, b"abc"])
def test_anything_else_is_dropped(value: object) -> None:
    assert sanitize(value) is None


def test_setup_installs_the_filter_on_the_root_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", root.level)
    logs.setup("info")
    logs.setup("info")  # idempotent: one filter, not two
    assert sum(isinstance(f, RequestIdFilter) for f in handler.filters) == 1
    assert sum(isinstance(f, WithholdExceptionMessages) for f in handler.filters) == 1
    context = contextvars.copy_context()
    context.run(REQUEST_ID.set, "ctx-1")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert context.run(handler.filter, record) and record.request_id == "ctx-1"  # type: ignore[attr-defined]


def _fail_on(key: str) -> None:
    {"known": 1}[key]


def test_a_logged_traceback_keeps_its_frames_but_not_the_message() -> None:
    """What uvicorn logs for an exception that escapes the app: the message may quote content."""
    log, out = _logger()
    log.handlers = [logging.StreamHandler(out)]
    log.handlers[0].addFilter(WithholdExceptionMessages())
    log.propagate = False
    secret = "zebra-canary-key"
    try:
        _fail_on(secret)
    except KeyError as exc:
        log.error("Exception in ASGI application\n", exc_info=exc)
        log.exception("again for %s", "route")
    text = out.getvalue()
    assert secret not in text
    assert text.count("KeyError (message withheld)") == 2 and "in _fail_on" in text
    assert "Exception in ASGI application\nTraceback" in text and "again for route" in text
