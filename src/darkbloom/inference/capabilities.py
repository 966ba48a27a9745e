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

# The request parameter each capability answers, as errors name it.
_PARAM = {
    "tools": "tools",
    "json_schema": "response_format",
    "logprobs": "logprobs",
    "seed": "seed",
    "stop_sequences": "stop",
    "completions": "prompt",
}
_WHAT = {
    "tools": "tool calls",
    "json_schema": "response_format (JSON mode and JSON schemas)",
    "logprobs": "logprobs",
    "seed": "seed",
    "stop_sequences": "stop sequences",
    "completions": "text completions (/v1/completions)",
}


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


def refusal(missing: frozenset[str]) -> InvalidRequest:
    """The 400 naming the first parameter of ``missing`` (capability names)."""
    first = sorted(missing)[0]
    return unsupported(_PARAM[first], _WHAT[first])


def require(request: GenerationRequest, capabilities: frozenset[str]) -> None:
    """A 400 naming the first parameter an engine with ``capabilities`` cannot honour, if any."""
    if missing := needed(request) - capabilities:
        raise refusal(missing)
