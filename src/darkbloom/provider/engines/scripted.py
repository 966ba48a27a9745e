"""A deterministic engine that replays fixed text pieces: for unit tests of serving and relay,
and for simulated-load benchmarks only. It never runs a model and is never offered by `serve`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

from darkbloom.inference.request import GenerationRequest
from darkbloom.protocol.frames import ModelInfo, Slot
from darkbloom.provider.engines.base import Finished, FinishReason, GenerationEvent, Started, TextDelta


class ScriptedEngine:
    name = "scripted"

    def __init__(self, pieces: list[str], model: str = "scripted-model", prompt_tokens: int = 7,
                 stop_sequence: str | None = None) -> None:
        self.pieces = pieces
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.stop_sequence = stop_sequence

    @property
    def slots(self) -> int:
        return 1

    @property
    def busy_slots(self) -> int:
        return 0

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.model)]

    def warm_models(self) -> list[str]:
        return [self.model]

    def capacity(self) -> list[Slot]:
        return [Slot(model=self.model)]

    def serves(self, model: str) -> bool:
        return model == self.model

    def model_info(self, model: str) -> ModelInfo | None:
        return self.models()[0] if self.serves(model) else None

    async def generate(self, request: GenerationRequest, max_tokens_cap: int,
                       cancel: threading.Event, cache_scope: str | None = None
                       ) -> AsyncIterator[GenerationEvent]:
        yield Started(self.prompt_tokens)
        limit = min(max_tokens_cap, request.max_tokens or max_tokens_cap)
        emitted = 0
        for piece in self.pieces[:limit]:
            if cancel.is_set():
                yield Finished("cancelled", self.prompt_tokens, emitted)
                return
            emitted += 1
            yield TextDelta(piece)
        finish: FinishReason = "length" if emitted == limit and len(self.pieces) > limit else "stop"
        yield Finished(finish, self.prompt_tokens, emitted, self.stop_sequence)

    def close(self) -> None:
        pass
