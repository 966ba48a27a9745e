"""How many tokens a request may generate, given its prompt and the model's context window."""

from __future__ import annotations

from darkbloom.errors import InvalidRequest
from darkbloom.inference.request import GenerationRequest


def output_budget(request: GenerationRequest, prompt_tokens: int, context_length: int,
                  default_max_tokens: int) -> int:
    """The cap on generated tokens, or InvalidRequest: context_length_exceeded as OpenAI words it,
    or empty_prompt for a prompt of no tokens.

    With no max_tokens the default is capped to what the context leaves (api.md §3.1); an explicit
    max_tokens that does not fit is an error, as on OpenAI, never silently shortened.
    """
    param = {"/v1/completions": "prompt", "/v1/responses": "input"}.get(request.endpoint, "messages")
    if prompt_tokens < 1:  # text that tokenizes to nothing ("\x16"): there is nothing to go on
        raise InvalidRequest(f"The {param} holds no tokens for this model (its text tokenizes to "
                             "nothing); send some text", param=param, code="empty_prompt")
    room = context_length - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"This model's maximum context length is {context_length} tokens. However, your "
            f"{param} resulted in {prompt_tokens} tokens. Please reduce the length of the {param}.",
            param=param, code="context_length_exceeded",
        )
    if request.max_tokens is None:
        return min(default_max_tokens, room)
    if request.max_tokens > room:
        raise InvalidRequest(
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {prompt_tokens + request.max_tokens} tokens ({prompt_tokens} in the "
            f"{param}, {request.max_tokens} in the completion). Please reduce the length of the "
            f"{param} or completion.",
            param=param, code="context_length_exceeded",
        )
    return request.max_tokens
