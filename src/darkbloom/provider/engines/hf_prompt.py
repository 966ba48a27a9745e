"""Prompts for engines that carry a Hugging Face tokenizer (mlx-lm, vLLM).

The conversation is the same list llama.cpp's PromptBuilder renders (inference/prompt.py
``chat_messages``), rendered by the model's own chat template, then tokenized with special-token
text recognised and no BOS added (the template writes it), which is what vLLM's own chat server
does. The engine is then handed these token ids, so ``count_tokens`` is exactly what it evaluates.
"""

from __future__ import annotations

import threading
from typing import Any

from jinja2 import TemplateError

from darkbloom.errors import InvalidRequest
from darkbloom.inference.prompt import FALLBACK_TEMPLATE, chat_messages
from darkbloom.inference.request import GenerationRequest


class HfPrompts:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: HF renders "default" unless told
            own = own.get("default")
        own = own if isinstance(own, str) and own else None
        # mlx-lm's wrapper can bring a template of its own for some models (has_chat_template).
        builtin = own is None and getattr(tokenizer, "has_chat_template", False) is True
        # A tokenizer without any template renders ChatML, as llama.cpp's PromptBuilder does.
        self._fallback = FALLBACK_TEMPLATE if own is None and not builtin else None
        # The template's text, as the runtime manifest hashes it (provider/fingerprint.py).
        self.template_source: str = own or self._fallback or "mlx-lm built-in chat template"
        self._lock = threading.Lock()  # HF fast tokenizers are not documented as thread-safe

    def render_chat(self, request: GenerationRequest) -> str:
        extra: dict[str, Any] = {} if self._fallback is None else {"chat_template": self._fallback}
        try:
            with self._lock:
                text = self._tokenizer.apply_chat_template(
                    chat_messages(request), tokenize=False, add_generation_prompt=True, **extra)
        except TemplateError as exc:
            # Template errors describe the conversation's shape (e.g. role order), never its text.
            raise InvalidRequest(f"messages do not fit the model's chat template: {exc.message}",
                                 param="messages") from None
        return str(text)

    def tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt is None:  # every dialect but text completions is a conversation
            text, special = self.render_chat(request), False
        else:
            text, special = request.prompt, True
        with self._lock:
            return [int(t) for t in self._tokenizer.encode(text, add_special_tokens=special)]
