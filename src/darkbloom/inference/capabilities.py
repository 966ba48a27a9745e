"""What a request needs beyond plain generation, and the names engines advertise for it.

A provider lists its models' capabilities in ``register``; the coordinator routes a request only
to providers whose model can do everything it needs, and refuses with 400 when none can, rather
than letting an engine silently ignore part of it (a schema it cannot enforce, a seed it cannot
honour). The provider runs the same check on what it is handed (consumer-blind requests, which
the coordinator cannot read).
"""

from __future__ import annotations

from darkbloom.errors import InvalidRequest
from darkbloom.inference.fields import unsupported
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import allowed

CAPABILITIES = frozenset({"tools", "json_schema", "logprobs", "seed", "stop_sequences", "completions"})

# The request parameter each capability answers, as errors name it: Chat Completions' names,
# and where another dialect spells the field differently, that dialect's (the client is told the
# field it sent; Anthropic's error shape has no ``param``, so the message names it too).
_PARAM = {
    "tools": "tools",
    "json_schema": "response_format",
    "logprobs": "logprobs",
    "seed": "seed",
    "stop_sequences": "stop",
    "completions": "prompt",
}
_DIALECT: dict[str, dict[str, str]] = {
    "/v1/responses": {"json_schema": "text.format", "logprobs": "top_logprobs"},
    "/v1/messages": {"stop_sequences": "stop_sequences"},
}
_WHAT = {
    "tools": "tool calls",
    "json_schema": "JSON mode and JSON schemas",
    "logprobs": "logprobs",
    "seed": "seed",
    "stop_sequences": "stop sequences",
    "completions": "text completions (/v1/completions)",
}


class Unsupported(InvalidRequest):
    """The 400 for a request no engine in reach can honour; ``missing`` keeps the capability
    names, so the coordinator can name the field in the client's own dialect once it knows the
    endpoint (the scheduler, which finds out, does not)."""

    def __init__(self, missing: frozenset[str], endpoint: str) -> None:
        first = sorted(missing)[0]
        param = _DIALECT.get(endpoint, {}).get(first, _PARAM[first])
        what = _WHAT[first]
        described = param if what == param else f"{param} ({what})"
        plain = unsupported(param, described)
        super().__init__(plain.message, param=plain.param, code=plain.code)
        self.missing = missing


def needed(request: GenerationRequest) -> frozenset[str]:
    wants: set[str] = set()
    if allowed(request.tools, request.tool_choice):
        wants.add("tools")
    if request.response_format is not None:
        wants.add("json_schema")
    if request.logprobs is not None:
        wants.add("logprobs")
    if request.sampling.seed is not None:
        wants.add("seed")
    if request.stop:
        wants.add("stop_sequences")
    if request.prompt is not None:
        wants.add("completions")
    return frozenset(wants)


def refusal(missing: frozenset[str], endpoint: str = "/v1/chat/completions") -> Unsupported:
    """The 400 naming the first parameter of ``missing`` (capability names) as ``endpoint``'s
    dialect spells it."""
    return Unsupported(missing, endpoint)


def require(request: GenerationRequest, capabilities: frozenset[str]) -> None:
    """A 400 naming the first parameter an engine with ``capabilities`` cannot honour, if any,
    in the request's own dialect."""
    if missing := needed(request) - capabilities:
        raise refusal(missing, request.endpoint)
