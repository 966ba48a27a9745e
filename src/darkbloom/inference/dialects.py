"""The translation layer's entry points: one parser and one formatter per endpoint.

Every dialect maps onto the same GenerationRequest going in and the same engine Outcome coming
out; the coordinator uses ``parse_request_off_loop`` to validate before routing, the provider uses
both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from darkbloom.errors import InvalidRequest
from darkbloom.inference.anthropic_format import AnthropicFormatter
from darkbloom.inference.anthropic_request import parse_messages
from darkbloom.inference.formatting import Formatter
from darkbloom.inference.grammar import grammar_for
from darkbloom.inference.openai_format import OpenAIFormatter
from darkbloom.inference.request import GenerationRequest, parse_chat, parse_completion, parse_json_body
from darkbloom.inference.responses_format import ResponsesFormatter
from darkbloom.inference.responses_request import parse_responses

_PARSERS = {
    "/v1/chat/completions": parse_chat,
    "/v1/completions": parse_completion,
    "/v1/messages": parse_messages,
    "/v1/responses": parse_responses,
}

ENDPOINTS = frozenset(_PARSERS)


def parse_request(endpoint: str, body: dict[str, Any]) -> GenerationRequest:
    parser = _PARSERS.get(endpoint)
    if parser is None:
        raise InvalidRequest(f"unsupported endpoint {endpoint}")
    request = parser(body)
    if request.tool_choice.mode == "required":
        grammar_for(request)  # a parameters schema the grammar cannot express is a 400 now
    return request


async def parse_request_off_loop(endpoint: str, raw: bytes,
                                 defaults: dict[str, Any] | None = None) -> GenerationRequest:
    """``parse_request`` of a raw body in a worker thread: parsing a 4 MiB body and converting a
    JSON Schema to a grammar take CPU time the event loop must not wait on. ``defaults`` fill
    keys the body leaves out."""
    return await asyncio.to_thread(_parse_raw, endpoint, raw, defaults or {})


def _parse_raw(endpoint: str, raw: bytes, defaults: dict[str, Any]) -> GenerationRequest:
    return parse_request(endpoint, {**defaults, **parse_json_body(raw)})


def formatter_for(request: GenerationRequest) -> Formatter:
    if request.endpoint == "/v1/messages":
        return AnthropicFormatter(request)
    if request.endpoint == "/v1/responses":
        return ResponsesFormatter(request)
    return OpenAIFormatter(request)
