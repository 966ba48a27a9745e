"""SIMULATED provider for load tests and benches: the real provider agent (`ProviderAgent`: real
WebSocket, registration, attestation, challenges, sealing, receipts, heartbeats) in front of an
engine that replays a recorded token stream at a fixed pace instead of running a model.

Labelled as simulated wherever it is used: it measures the coordinator and the wire, not
inference. It announces the default catalog model (with its weight hash) so the coordinator
routes to it as to any provider; `darkbloom serve` never offers it.

    python -m tests.e2e.sim_provider   (settings from DARKBLOOM_PROVIDER_* as for `serve`, plus
                                        DARKBLOOM_SIM_TOKENS, DARKBLOOM_SIM_TOKEN_S)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator

from darkbloom.config import get_provider_settings
from darkbloom.inference.catalog import DEFAULT_MODEL
from darkbloom.inference.prompt import PromptBuilder
from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.frames import ModelInfo, Slot
from darkbloom.provider.engines.base import Finished, FinishReason, GenerationEvent, Started, TextDelta
from darkbloom.provider.runtime import serve

# A recorded answer of the default model, one piece per token.
RECORDED = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?", " I", "'m", " here",
            " to", " answer", " questions", ",", " explain", " ideas", " and", " write", ".")


class ReplayEngine:
    """SIMULATED: replays ``RECORDED`` (cycled) one piece per ``token_s`` seconds, in any number of
    slots; counts the prompt exactly, with the model's vocabulary (as the coordinator does), so
    the usage it reports holds."""

    name = "simulated"

    def __init__(self, slots: int, tokens: int, token_s: float, prefill_s: float = 0.0) -> None:
        self._slots, self.tokens, self.token_s, self.prefill_s = slots, tokens, token_s, prefill_s
        self._busy = 0
        path = DEFAULT_MODEL.weights_path()
        self._builder = PromptBuilder.vocab_only(path) if path is not None else None

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def busy_slots(self) -> int:
        return self._busy

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=DEFAULT_MODEL.id, weight_hash=DEFAULT_MODEL.weight_hash,
                          size_bytes=DEFAULT_MODEL.size_bytes)]

    def warm_models(self) -> list[str]:
        return [DEFAULT_MODEL.id]

    def capacity(self) -> list[Slot]:
        return [Slot(model=DEFAULT_MODEL.id, num_running=self._busy)]

    def serves(self, model: str) -> bool:
        return model == DEFAULT_MODEL.id

    def model_info(self, model: str) -> ModelInfo | None:
        return self.models()[0] if self.serves(model) else None

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        prompt = (len(self._builder.tokens(request)) if self._builder is not None
                  else max(1, len(repr(request)) // 4))
        limit = min(max_tokens_cap, request.max_tokens or self.tokens, self.tokens)
        self._busy += 1
        try:
            yield Started(prompt)
            if self.prefill_s:  # a prompt's evaluation, as a real engine's takes time
                await asyncio.sleep(self.prefill_s)
            for i in range(limit):
                if cancel.is_set():
                    yield Finished("cancelled", prompt, i)
                    return
                await asyncio.sleep(self.token_s)
                yield TextDelta(RECORDED[i % len(RECORDED)])
            finish: FinishReason = "length" if limit < self.tokens else "stop"
            yield Finished(finish, prompt, limit)
        finally:
            self._busy -= 1

    def close(self) -> None:
        pass


def main() -> None:
    settings = get_provider_settings()
    logging.basicConfig(level=settings.log_level.upper())
    engine = ReplayEngine(settings.slots, int(os.environ.get("DARKBLOOM_SIM_TOKENS", "16")),
                          float(os.environ.get("DARKBLOOM_SIM_TOKEN_S", "0.01")),
                          float(os.environ.get("DARKBLOOM_SIM_PREFILL_S", "0")))
    asyncio.run(serve(settings, engine))


if __name__ == "__main__":
    main()
