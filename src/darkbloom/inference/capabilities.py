"""What a request needs beyond plain generation, and the names engines advertise for it.

A provider lists its models' capabilities in ``register``; the coordinator routes a request only
to providers whose model can do everything it needs, and refuses with 400 when none can, rather
than letting an engine silently ignore a field (a JSON schema not enforced, logprobs missing).
The provider checks again, for consumer-blind requests the coordinator cannot read.
"""

from __future__ import annotations

from darkbloom.errors import InvalidRequest
from darkbloom.inference.request import GenerationRequest

CAPABILITIES = frozenset({"tools", "json_schema", "logprobs", "seed", "stop_sequences", "completions"})

_PARAM = {"tools": "tools", "json_schema": "response_format", "logprobs": "logprobs",
          "seed": "seed", "stop_sequences": "stop", "completions": "prompt"}


def required(request: GenerationRequest) -> frozenset[str]:
    needs = set()
    if request.tools and request.tool_choice.mode != "none":
        needs.add("tools")
    if request.response_format is not None:
        needs.add("json_schema")
    if request.logprobs is not None:
        needs.add("logprobs")
    if request.sampling.seed is not None:
        needs.add("seed")
    if request.stop:
        needs.add("stop_sequences")
    if request.prompt is not None:
        needs.add("completions")
    return frozenset(needs)


def unsupported(model: str, missing: frozenset[str]) -> InvalidRequest:
    """The 400 for a request no provider of ``model`` can serve as asked."""
    names = sorted(missing)
    return InvalidRequest(
        f"model {model!r} is served here by engines that cannot do: {', '.join(names)}; remove "
        f"{'that field' if len(names) == 1 else 'those fields'} or use another model",
        param=_PARAM[names[0]], code="unsupported_capability")
