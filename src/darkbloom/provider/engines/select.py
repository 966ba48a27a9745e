"""Which engine runs a model here: the one the operator named, else the one for its format.

GGUF files run on llama.cpp (any OS; CPU, Metal or CUDA), MLX directories on mlx-lm (Apple
Silicon), safetensors directories on vLLM (NVIDIA). Nothing here imports an engine's library:
``problem()`` only looks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from darkbloom.provider.engines.base import EngineBackend, LocalModel, ModelFormat
from darkbloom.provider.engines.llamacpp import LlamaCppBackend
from darkbloom.provider.engines.mlx import MlxBackend
from darkbloom.provider.engines.vllm import VllmBackend

BACKENDS: tuple[EngineBackend, ...] = (LlamaCppBackend(), MlxBackend(), VllmBackend())
DEFAULT_FOR: dict[ModelFormat, str] = {"gguf": "llama.cpp", "mlx": "mlx-lm", "safetensors": "vllm"}
# Other spellings an operator may write in the config or on the command line.
ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "mlx": "mlx-lm", "mlx_lm": "mlx-lm"}


class EngineUnavailable(Exception):
    """One line for the operator: which engine, why not, and what to do."""


def names(backends: Sequence[EngineBackend] = BACKENDS) -> tuple[str, ...]:
    return tuple(b.name for b in backends)


def by_name(name: str, backends: Sequence[EngineBackend] = BACKENDS) -> EngineBackend:
    wanted = name.strip().lower()
    wanted = ALIASES.get(wanted, wanted)
    for backend in backends:
        if backend.name == wanted:
            return backend
    raise EngineUnavailable(f"unknown engine {name!r}: use one of {', '.join(names(backends))}")


def choose(model: LocalModel, preferred: str | None = None,
           backends: Sequence[EngineBackend] = BACKENDS) -> EngineBackend:
    """The engine to load ``model`` with; EngineUnavailable when none can run it here."""
    if preferred:
        backend = by_name(preferred, backends)
        if model.format not in backend.formats:
            loads = " or ".join(sorted(backend.formats))
            raise EngineUnavailable(
                f"engine {backend.name} cannot load {model.id}: it is a {model.format} model and "
                f"{backend.name} loads {loads}; remove the engine setting to use "
                f"{DEFAULT_FOR[model.format]}, or pick a {loads} build of the model")
        if (problem := backend.problem()) is not None:
            raise EngineUnavailable(f"engine {backend.name} cannot run here: {problem}")
        return backend
    backend = by_name(DEFAULT_FOR[model.format], backends)
    if (problem := backend.problem()) is not None:
        raise EngineUnavailable(f"{model.id} is a {model.format} model, which runs on "
                                f"{backend.name}, and {backend.name} cannot run here: {problem}")
    return backend
