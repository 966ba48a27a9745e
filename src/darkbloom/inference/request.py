"""Parse and validate OpenAI-dialect request bodies into one internal GenerationRequest.

The coordinator runs this before routing (so bad input never reaches a provider) and the provider
runs it again on the body it decrypts (so it never trusts the coordinator's reading). Every failure
is an InvalidRequest naming the parameter, in the words OpenAI's API uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from darkbloom.errors import InvalidRequest
from darkbloom.inference import bounded_json
from darkbloom.inference.fields import (
    bounded_number,
    is_int,
    model_name,
    reject_unknown,
    stop_sequences,
    stream_flag,
    token_limit,
    unsupported,
)
from darkbloom.inference.grammar import ResponseFormat, parse_json_schema_format
from darkbloom.inference.tools import AUTO, NONE, Tool, ToolChoice, choose, define, parse_tools, written_call

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
                   "/v1/audio/transcriptions", "/v1/images/generations"]

MAX_MESSAGES = 2048
MAX_TOP_LOGPROBS = 20
MAX_TOP_K = 2**31 - 1  # llama.cpp reads it as a C int
DEFAULT_MAX_TOKENS = 8192
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Accepted and deliberately without effect on generation (docs/decisions.md).
_IGNORED = frozenset({
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key",
    "safety_identifier",
})
_SAMPLING = frozenset({
    "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "seed",
})
_CHAT_KEYS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "n", "stop", "stream",
    "stream_options", "response_format", "tools", "tool_choice", "logprobs", "top_logprobs",
    "audio", "modalities", "prediction", "logit_bias",
}) | _SAMPLING | _IGNORED
_COMPLETION_KEYS = frozenset({
    "model", "prompt", "max_tokens", "n", "stop", "stream", "stream_options", "echo", "suffix",
    "best_of", "logprobs", "logit_bias",
}) | _SAMPLING | _IGNORED


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling settings; defaults follow provider.md (temperature 0.7, top_p 0.9)."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    endpoint: Endpoint
    model: str
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    instructions: str | None = None  # Responses: echoed back as given, also present in messages
    response_format: ResponseFormat | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = NONE
    logprobs: int | None = None  # None: off; N: each token's logprob and its N best alternatives
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    sampling: Sampling = field(default_factory=Sampling)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object: UTF-8 (RFC 8259), nested at most MAX_DEPTH deep, and with no
    lone surrogate, so nothing later (the tokenizer, an error message) can fail on it."""
    try:
        body = bounded_json.loads(raw.decode("utf-8-sig"))
    except bounded_json.TooDeep:
        raise InvalidRequest(f"The request body is nested more than {bounded_json.MAX_DEPTH} levels "
                             "deep.", code="invalid_json") from None
    except bounded_json.TooManyContainers:
        raise InvalidRequest(f"The request body has more than {bounded_json.MAX_CONTAINERS} '[' and "
                             "'{' characters.", code="invalid_json") from None
    except bounded_json.TooManyValues:
        raise InvalidRequest(f"The request body has more than {bounded_json.MAX_VALUES} values.",
                             code="invalid_json") from None
    except bounded_json.LoneSurrogate:
        raise InvalidRequest("The request body contains a lone UTF-16 surrogate escape "
                             "(\\ud800-\\udfff), which is not valid Unicode.") from None
    except ValueError:  # UnicodeDecodeError included
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    reject_unknown(body, _CHAT_KEYS)
    model = model_name(body)
    messages = _messages(body.get("messages"))
    _common_unsupported(body)
    logprobs = _chat_logprobs(body)
    for key in ("audio", "prediction", "logit_bias"):
        if body.get(key):
            raise unsupported(key)
    if body.get("modalities") not in (None, ["text"]):
        raise unsupported("modalities", "modalities other than [\"text\"]")
    response_format = _response_format(body.get("response_format"))
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    max_tokens = token_limit(body, "max_tokens")
    completion_cap = token_limit(body, "max_completion_tokens")
    return GenerationRequest(
        endpoint="/v1/chat/completions",
        model=model,
        messages=messages,
        max_tokens=completion_cap if completion_cap is not None else max_tokens,
        stop=stop_sequences(body.get("stop")),
        stream=stream_flag(body),
        include_usage=_include_usage(body),
        sampling=_sampling(body),
        response_format=response_format,
        tools=tools,
        tool_choice=tool_choice,
        logprobs=logprobs,
    )


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """``logprobs: true`` (+ ``top_logprobs`` 0-20): the number of alternatives, or None for off."""
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise InvalidRequest("logprobs must be a boolean", param="logprobs")
    if top is not None:
        if not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}",
                                 param="top_logprobs")
        if not wanted:
            raise InvalidRequest("top_logprobs requires logprobs: true", param="top_logprobs")
    return int(top or 0) if wanted else None


def _tools(value: Any) -> tuple[Tool, ...]:
    return parse_tools(value, _tool)


def _tool(i: int, item: Any) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(item, dict) or item.get("type") != "function":
        raise InvalidRequest(f"{where}.type must be 'function'", param=f"{where}.type")
    function = item.get("function")
    if not isinstance(function, dict):
        raise InvalidRequest(f"{where}.function is required", param=f"{where}.function")
    return define(function.get("name"), function.get("description"), function.get("parameters"),
                  f"{where}.function")


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return AUTO if tools else NONE
    if value in ("none", "auto", "required"):
        return choose(value, None, tools, "tool_choice")
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("function"), dict):
        name = value["function"].get("name")
        if isinstance(name, str):
            return choose("required", name, tools, "tool_choice")
    raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or "
                         '{"type": "function", "function": {"name": ...}}', param="tool_choice")


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequest("response_format must be an object with a 'type'", param="response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        return parse_json_schema_format(value.get("json_schema"), "response_format.json_schema")
    raise InvalidRequest(f"Invalid value for response_format.type: {kind[:32]!r}. Supported values "
                         "are: 'text', 'json_object' and 'json_schema'.", param="response_format.type")


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    reject_unknown(body, _COMPLETION_KEYS)
    model = model_name(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt must be a string or an array of exactly one string; "
                                 "batched prompts are not supported", param="prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt is required and must be a string", param="prompt")
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    _common_unsupported(body)
    if body.get("echo") not in (None, False):
        raise unsupported("echo")
    if body.get("suffix") not in (None, ""):
        raise unsupported("suffix")
    if body.get("best_of") not in (None, 1):
        raise unsupported("best_of")
    logprobs = body.get("logprobs")
    if logprobs is not None and (not is_int(logprobs) or not 0 <= logprobs <= 5):
        raise InvalidRequest("logprobs must be an integer from 0 to 5", param="logprobs")
    if body.get("logit_bias"):
        raise unsupported("logit_bias")
    return GenerationRequest(
        endpoint="/v1/completions",
        model=model,
        prompt=prompt,
        max_tokens=token_limit(body, "max_tokens"),
        stop=stop_sequences(body.get("stop")),
        stream=stream_flag(body),
        include_usage=_include_usage(body),
        sampling=_sampling(body),
        logprobs=logprobs,
    )


# --- field rules ---------------------------------------------------------------------------


def _common_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None:
        if not is_int(n) or n < 1:
            raise InvalidRequest("n must be a positive integer", param="n")
        if n > 1:
            raise InvalidRequest("n > 1 is not supported: each request returns one choice",
                                 param="n", code="unsupported_parameter")


def _messages(value: Any) -> tuple[Message, ...]:
    if value is None:
        raise InvalidRequest("messages is required", param="messages")
    if not isinstance(value, list):
        raise InvalidRequest("messages must be an array", param="messages")
    if not value:
        raise InvalidRequest("messages must contain at least one message", param="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"messages may contain at most {MAX_MESSAGES} items", param="messages")
    parsed = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for the results that follow
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = item.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"{where}.role is required", param=f"{where}.role")
        if role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for {where}.role: {role[:32]!r}. Supported values are: "
                "'system', 'developer', 'user', 'assistant' and 'tool'.",
                param=f"{where}.role",
            )
        if role == "assistant" and item.get("tool_calls"):
            calls = _written_calls(item["tool_calls"], f"{where}.tool_calls", call_names)
            said = _content(item["content"], f"{where}.content") if item.get("content") else ""
            parsed.append(Message("assistant", f"{said}\n{calls}" if said else calls))
            continue
        content = _content(item.get("content"), f"{where}.content")
        if role == "tool":
            call_id = item.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
            content = f"Result of {call_names.get(call_id, call_id)}: {content}"
        parsed.append(Message("system" if role == "developer" else role, content))
    return tuple(parsed)


def _written_calls(calls: Any, where: str, call_names: dict[str, str]) -> str:
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where} must be an array", param=where)
    written = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments", ""), str):
            raise InvalidRequest(f"{where}[{j}] must have function.name and function.arguments "
                                 "(a JSON string)", param=f"{where}[{j}]")
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = function["name"]
        written.append(written_call(function["name"], function.get("arguments", ""),
                                    f"{where}[{j}].function.arguments"))
    return "\n".join(written)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"{where}[{j}] must be an object with a 'type'",
                                     param=f"{where}[{j}]")
            if part["type"] != "text":
                raise InvalidRequest(
                    f"{where}[{j}] has type {part['type'][:32]!r}; this model accepts text only",
                    param=f"{where}[{j}].type", code="unsupported_parameter",
                )
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}[{j}].text must be a string",
                                     param=f"{where}[{j}].text")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        raise InvalidRequest(f"{where} is required", param=where)
    raise InvalidRequest(f"{where} must be a string or an array of content parts", param=where)


def basic_sampling(body: dict[str, Any], temperature_max: float, top_k_prefix: str = "") -> Sampling:
    """temperature (0 to ``temperature_max``), top_p and top_k, with provider.md's defaults:
    what every dialect has; OpenAI's extra knobs are added by ``_sampling``."""
    defaults = Sampling()
    temperature = bounded_number(body, "temperature", 0, temperature_max)
    top_p = bounded_number(body, "top_p", 0, 1, lo_open=True)
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or not 0 <= top_k <= MAX_TOP_K):
        raise InvalidRequest(f"top_k{top_k_prefix} must be an integer from 0 to {MAX_TOP_K}",
                             param="top_k")
    return Sampling(temperature=defaults.temperature if temperature is None else float(temperature),
                    top_p=defaults.top_p if top_p is None else float(top_p), top_k=int(top_k or 0))


def _sampling(body: dict[str, Any]) -> Sampling:
    base = basic_sampling(body, temperature_max=2)
    min_p = bounded_number(body, "min_p", 0, 1)
    presence = bounded_number(body, "presence_penalty", -2, 2)
    frequency = bounded_number(body, "frequency_penalty", -2, 2)
    repetition = bounded_number(body, "repetition_penalty", 0, 2, lo_open=True)
    seed = body.get("seed")
    if seed is not None and (not is_int(seed) or not -(2**63) <= seed < 2**64):
        raise InvalidRequest("seed must be a 64-bit integer", param="seed")
    return replace(
        base,
        min_p=float(min_p or 0.0),
        presence_penalty=float(presence or 0.0),
        frequency_penalty=float(frequency or 0.0),
        repetition_penalty=1.0 if repetition is None else float(repetition),
        seed=seed,
    )


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    if not body.get("stream"):
        raise InvalidRequest("stream_options is only allowed when stream is true",
                             param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequest("stream_options.include_usage must be a boolean",
                             param="stream_options.include_usage")
    return include
