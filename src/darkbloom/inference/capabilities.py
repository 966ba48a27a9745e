"""Which engine capabilities (provider/engines/base.py CAPABILITIES) a request needs.

The coordinator refuses with 400 what no provider of the model can do; an engine runs the same
check on what it is handed, so a request never reaches an engine that would silently ignore part
of it (a schema it cannot enforce, a seed it cannot honour).
"""

from __future__ import annotations

from darkbloom.inference.fields import unsupported
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import allowed

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


def require(request: GenerationRequest, capabilities: frozenset[str]) -> None:
    """A 400 naming the first parameter an engine with ``capabilities`` cannot honour, if any."""
    missing = sorted(needed(request) - capabilities)
    if missing:
        raise unsupported(_PARAM[missing[0]], _WHAT[missing[0]])
