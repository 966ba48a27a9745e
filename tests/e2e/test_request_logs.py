"""Every coordinator and provider log line about a request carries its X-Request-ID, with real
processes at DEBUG (the harness's level), and the id never leaks onto other requests' lines."""

from __future__ import annotations

import re
import time
import uuid

import openai

from tests.e2e.harness import MODEL, Coordinator


def tagged(log: str, request_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"[req={request_id}]" in line]


def provider_log(stack: Coordinator) -> str:
    return (stack.workdir / "provider.log").read_text(errors="replace")


def logs_once(stack: Coordinator, request_id: str, marker: str) -> tuple[str, str]:
    """Both logs, once the coordinator has logged ``marker`` under ``request_id`` (the end of a
    stream is logged just after its last byte went out)."""
    deadline = time.monotonic() + 15
    while not any(marker in line for line in tagged(stack.log_text(), request_id)):
        assert time.monotonic() < deadline, f"no {marker!r} line for {request_id}"
        time.sleep(0.1)
    return stack.log_text(), provider_log(stack)


def test_the_request_id_is_on_both_sides_log_lines(stack: Coordinator, client: openai.OpenAI) -> None:
    reply = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hello"}],
        extra_headers={"X-Request-ID": "trace-me-123"})
    assert reply.headers["x-request-id"] == "trace-me-123"
    job = reply.headers["x-inference-job-id"]
    streamed = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4, stream=True, messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"X-Request-ID": "trace-me-456"})
    list(streamed.parse())
    logs_once(stack, "trace-me-123", "completed (200)")
    coordinator, provider = logs_once(stack, "trace-me-456", "completed (200)")

    mine = tagged(coordinator, "trace-me-123")
    # The access line, the commit and the end of the request: all under the consumer's id.
    assert any('"POST /v1/chat/completions HTTP/1.1" 200' in line for line in mine)
    assert any("committed to provider" in line for line in mine)
    # The provider learned the id from the coordinator and logs the job under it; no line on
    # either side names the job without the request's id (a driver's SQL log would).
    assert any(job in line for line in tagged(provider, "trace-me-123"))
    about_job = [line for line in (coordinator + provider).splitlines() if job in line]
    assert all("[req=trace-me-123]" in line for line in about_job), about_job
    for name, log in (("coordinator", coordinator), ("provider", provider)):
        streamed_lines = tagged(log, "trace-me-456")
        assert streamed_lines, f"no {name} line about the streamed request"
        assert not any(job in line for line in streamed_lines), f"{name} mixed the two requests up"
    # Lines about no request say so; connection-level lines never borrow a request's id.
    assert any("[req=-]" in line and "registered as" in line for line in provider.splitlines())
    assert any("[req=-]" in line and "coordinator ready" in line for line in coordinator.splitlines())


def test_an_unusable_request_id_is_replaced_not_logged(stack: Coordinator, client: openai.OpenAI) -> None:
    given = f"bad id {uuid.uuid4().hex}"  # a space: refused by the middleware
    reply = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"X-Request-ID": given})
    issued = reply.headers["x-request-id"]
    assert issued != given and re.fullmatch(r"[a-z2-7]{12}", issued)
    coordinator, provider = logs_once(stack, issued, "completed (200)")
    assert given.split()[-1] not in coordinator + provider
    assert tagged(provider, issued)
