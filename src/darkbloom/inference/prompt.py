"""Turn a GenerationRequest into the exact token sequence the engine will see.

The coordinator (with a vocabulary-only llama.cpp model) and the provider (with the full one)
share this code, so the coordinator's context-length check and `max_tokens_cap` are computed on
the very tokens the provider evaluates.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from darkbloom.errors import InvalidRequest
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import allowed, system_prompt

# ChatML, for GGUF files that carry no template of their own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


def chat_messages(request: GenerationRequest) -> list[dict[str, str]]:
    """The conversation as a chat template takes it, the offered tools listed in the (first) system
    message; every engine renders this same list, so a model sees the same prompt on each."""
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    offered = allowed(request.tools, request.tool_choice)
    if offered:
        listing = system_prompt(offered)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{listing}"}
        else:
            messages.insert(0, {"role": "system", "content": listing})
    return messages


class PromptBuilder:
    """Chat-template rendering and tokenization for one loaded llama.cpp model."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        metadata: dict[str, str] = dict(getattr(llama, "metadata", {}) or {})
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        # The template's text, as the runtime manifest hashes it (provider/fingerprint.py).
        self.template_source = metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        self._template = env.from_string(self.template_source)
        self._bos = self._token_text(llama.token_bos())
        self._eos = self._token_text(llama.token_eos())
        self._lock = threading.Lock()

    @classmethod
    def vocab_only(cls, model_path: Path) -> PromptBuilder:
        from llama_cpp import Llama

        return cls(Llama(model_path=str(model_path), vocab_only=True, verbose=False))

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama.detokenize([token], special=True)).decode("utf-8", "replace")

    def render_chat(self, request: GenerationRequest) -> str:
        try:
            return self._template.render(messages=chat_messages(request), add_generation_prompt=True,
                                         bos_token=self._bos, eos_token=self._eos)
        except TemplateError as exc:
            # Template errors describe the conversation's shape (e.g. role order), never its text.
            raise InvalidRequest(f"messages do not fit the model's chat template: {exc.message}",
                                 param="messages") from None

    def tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt is None:  # every dialect but text completions is a conversation
            text, special = self.render_chat(request), True
        else:
            text, special = request.prompt or "", False
        return self._tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def count(self, text: str) -> int:
        """Tokens in generated ``text`` (no BOS, special tokens as plain text): a recount of what a
        provider says it generated."""
        return len(self._tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        """llama.cpp's tokenizer, called once. llama-cpp-python sizes its token buffer by the
        model's training context, which a vocabulary-only model reports as 0: every coordinator
        tokenization ran twice (once to learn the size), in every request's time to first
        token. A token is at least one byte, so the text's length (and room for what the
        tokenizer adds: BOS, EOS, a leading space) always fits."""
        model = getattr(self._llama, "_model", None)
        with self._lock:  # llama.cpp's tokenizer is not documented as thread-safe
            if model is None:  # not a llama_cpp.Llama (a test's stand-in)
                return list(self._llama.tokenize(text, add_bos=add_bos, special=special))
            import llama_cpp

            room = len(text) + 8
            for _ in range(2):
                buffer = (llama_cpp.llama_token * room)()
                n = llama_cpp.llama_tokenize(model.vocab, text, len(text), buffer, room, add_bos,
                                             special)
                if n >= 0:
                    return buffer[:n]
                room = -n  # cannot happen (see above); llama.cpp said how much it needs
            raise RuntimeError("llama.cpp could not tokenize the text")
