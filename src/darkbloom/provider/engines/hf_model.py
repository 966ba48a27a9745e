"""What the engines on Hugging Face tokenizers (mlx-lm, vLLM) share: slots counted by a
semaphore, the chat template, and the refusal of what the engine cannot do before a slot is
taken. Each subclass streams one request's events in ``_stream``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from darkbloom.inference.capabilities import require
from darkbloom.inference.request import GenerationRequest
from darkbloom.provider.engines.base import GenerationEvent, LocalModel
from darkbloom.provider.engines.hf_prompt import HfPrompts
from darkbloom.provider.fingerprint import template_hash


class HfModel:
    capabilities: frozenset[str]
    model: LocalModel
    _prompts: HfPrompts

    def _init_slots(self, slots: int) -> None:
        self._slots = slots
        self._busy = 0
        self._free = asyncio.Semaphore(slots)

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def busy_slots(self) -> int:
        return self._busy

    @property
    def template_hash(self) -> str:
        """The chat template this model renders with, hashed for the runtime manifest."""
        return template_hash(self._prompts.template_source)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._prompts.tokens(request))

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        require(request, self.capabilities)
        async with self._free:
            self._busy += 1
            try:
                # aclosing: a consumer that leaves early closes the inner stream now, not at GC.
                async with aclosing(self._stream(request, max_tokens_cap, cancel, cache_scope)) as events:
                    async for event in events:
                        yield event
            finally:
                self._busy -= 1

    def _stream(self, request: GenerationRequest, max_tokens_cap: int, cancel: threading.Event,
                cache_scope: str | None) -> AsyncGenerator[GenerationEvent]:
        raise NotImplementedError
