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


# Up to this size a body without schemas parses in well under a millisecond: inline, since a
# thread hop costs more than that on a busy machine (it showed in time to first token).
INLINE_BYTES = 32 * 1024
# Keys whose values become grammars (JSON Schema conversion can take a hundred milliseconds).
_GRAMMAR_KEYS = frozenset({"tools", "response_format", "text"})


async def parse_request_off_loop(endpoint: str, raw: bytes,
                                 defaults: dict[str, Any] | None = None) -> GenerationRequest:
    """``parse_request`` of a raw body, never holding the event loop: a large body, or one whose
    schemas become grammars, is parsed in a worker thread; a small plain one inline. The check
    reads the parsed keys, so no spelling of a key gets a schema past it. ``defaults`` fill keys
    the body leaves out."""
    if len(raw) > INLINE_BYTES:
        return await asyncio.to_thread(_parse_raw, endpoint, raw, defaults or {})
    body = {**(defaults or {}), **parse_json_body(raw)}
    if _GRAMMAR_KEYS & body.keys():
        return await asyncio.to_thread(parse_request, endpoint, body)
    return parse_request(endpoint, body)


def _parse_raw(endpoint: str, raw: bytes, defaults: dict[str, Any]) -> GenerationRequest:
    return parse_request(endpoint, {**defaults, **parse_json_body(raw)})


def formatter_for(request: GenerationRequest) -> Formatter:
    if request.endpoint == "/v1/messages":
        return AnthropicFormatter(request)
    if request.endpoint == "/v1/responses":
        return ResponsesFormatter(request)
    return OpenAIFormatter(request)
