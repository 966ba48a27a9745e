"""Which engine runs a model here: the one the operator named, else the one for its format.

Whisper CTranslate2 directories run on faster-whisper, diffusers pipelines on diffusers (media.md).
GGUF files run on llama.cpp (any OS; CPU, Metal or CUDA), MLX directories on mlx-lm (Apple
Silicon), safetensors directories on vLLM (NVIDIA), or on mlx-lm where vLLM cannot run (mlx-lm
loads a plain Hugging Face safetensors checkpoint too, converting as it loads). Nothing here
imports an engine's library: ``problem()`` only looks for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from darkbloom.provider.engines.base import EngineBackend, LocalModel, ModelFormat
from darkbloom.provider.engines.diffusion import DiffusersBackend
from darkbloom.provider.engines.llamacpp import LlamaCppBackend
from darkbloom.provider.engines.mlx import MlxBackend
from darkbloom.provider.engines.vllm import VllmBackend
from darkbloom.provider.engines.whisper import FasterWhisperBackend

BACKENDS: tuple[EngineBackend, ...] = (LlamaCppBackend(), MlxBackend(), VllmBackend(),
                                       FasterWhisperBackend(), DiffusersBackend())
DEFAULT_FOR: dict[ModelFormat, str] = {"gguf": "llama.cpp", "mlx": "mlx-lm", "safetensors": "vllm",
                                       "ctranslate2": "faster-whisper", "diffusers": "diffusers"}
# Other spellings an operator may write in the config or on the command line.
# Engines that also load a format, when its own engine cannot run here.
ALSO_FOR: dict[ModelFormat, tuple[str, ...]] = {"safetensors": ("mlx-lm",)}
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
        if model.format not in backend.formats and backend.name not in ALSO_FOR.get(model.format, ()):
            loads = " or ".join(sorted(backend.formats))
            raise EngineUnavailable(
                f"engine {backend.name} cannot load {model.id}: it is a {model.format} model and "
                f"{backend.name} loads {loads}; remove the engine setting to use "
                f"{DEFAULT_FOR[model.format]}, or pick a {loads} build of the model")
        if (problem := backend.problem()) is not None:
            raise EngineUnavailable(f"engine {backend.name} cannot run here: {problem}")
        return backend
    backend = by_name(DEFAULT_FOR[model.format], backends)
    if (problem := backend.problem()) is None:
        return backend
    others = [by_name(name, backends) for name in ALSO_FOR.get(model.format, ())
              if name in names(backends)]
    reasons = [f"{backend.name}: {problem}"]
    for other in others:
        if (other_problem := other.problem()) is None:
            return other
        reasons.append(f"{other.name}: {other_problem}")
    if others:
        alternatives = " or ".join(o.name for o in others)
        raise EngineUnavailable(f"{model.id} is a {model.format} model, which runs on "
                                f"{backend.name} or {alternatives}, and none of them can run here "
                                f"({'; '.join(reasons)})")
    raise EngineUnavailable(f"{model.id} is a {model.format} model, which runs on "
                            f"{backend.name}, and {backend.name} cannot run here: {problem}")
