"""Engine choice (select.py): the operator's engine if it can load the format and run here, else
the format's engine; every refusal one line with what to do. And no engine library is imported
before a model loads."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from darkbloom.provider.engines.base import LoadedModel, LocalModel, ModelFormat
from darkbloom.provider.engines.diffusion import DiffusersBackend
from darkbloom.provider.engines.llamacpp import LlamaCppBackend
from darkbloom.provider.engines.mlx import MlxBackend
from darkbloom.provider.engines.select import BACKENDS, EngineUnavailable, by_name, choose
from darkbloom.provider.engines.vllm import VllmBackend
from darkbloom.provider.engines.whisper import FasterWhisperBackend


@dataclass
class Backend:
    name: str
    formats: frozenset[ModelFormat]
    trouble: str | None = None
    loaded: list[LocalModel] = field(default_factory=list)

    def problem(self) -> str | None:
        return self.trouble

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> LoadedModel:
        raise AssertionError("choosing never loads")


def machine(mac: bool = False, nvidia: bool = False) -> list[Backend]:
    return [
        Backend("llama.cpp", frozenset({"gguf"})),
        Backend("mlx-lm", frozenset({"mlx"}), None if mac else "mlx-lm needs a Mac with Apple Silicon"),
        Backend("vllm", frozenset({"safetensors"}), None if nvidia else "vLLM needs an NVIDIA GPU"),
    ]


def model(fmt: ModelFormat) -> LocalModel:
    return LocalModel(id=f"m-{fmt}", path=Path("/models/m"), format=fmt, size_bytes=1)


@pytest.mark.parametrize(("fmt", "mac", "nvidia", "engine"), [
    ("gguf", False, False, "llama.cpp"),
    ("gguf", True, False, "llama.cpp"),
    ("gguf", False, True, "llama.cpp"),
    ("mlx", True, False, "mlx-lm"),
    ("safetensors", False, True, "vllm"),
])
def test_each_format_goes_to_its_engine(fmt: ModelFormat, mac: bool, nvidia: bool,
                                        engine: str) -> None:
    assert choose(model(fmt), None, machine(mac, nvidia)).name == engine


@pytest.mark.parametrize(("fmt", "words"), [
    ("mlx", "m-mlx is a mlx model, which runs on mlx-lm, and mlx-lm cannot run here: "
            "mlx-lm needs a Mac with Apple Silicon"),
    ("safetensors", "m-safetensors is a safetensors model, which runs on vllm or mlx-lm, and none "
                    "of them can run here (vllm: vLLM needs an NVIDIA GPU; mlx-lm: mlx-lm needs a "
                    "Mac with Apple Silicon)"),
])
def test_a_format_whose_engine_cannot_run_here(fmt: ModelFormat, words: str) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        choose(model(fmt), None, machine())
    assert str(caught.value) == words


def test_safetensors_runs_on_mlx_lm_where_vllm_cannot() -> None:
    """mlx-lm loads a plain Hugging Face safetensors checkpoint: on a Mac it serves one."""
    mac = machine(mac=True)
    assert choose(model("safetensors"), None, mac) is mac[1]
    assert choose(model("safetensors"), "mlx-lm", mac) is mac[1]
    both = machine(mac=True, nvidia=True)  # vLLM first where it runs
    assert choose(model("safetensors"), None, both) is both[2]
    with pytest.raises(EngineUnavailable, match="mlx-lm needs a Mac"):
        choose(model("safetensors"), "mlx-lm", machine(nvidia=True))


def test_the_preferred_engine_wins_when_it_can() -> None:
    backends = machine(mac=True)
    assert choose(model("mlx"), "mlx-lm", backends) is backends[1]
    assert choose(model("mlx"), " MLX ", backends) is backends[1]  # an alias, any case
    assert choose(model("gguf"), "llamacpp", backends) is backends[0]


def test_a_preferred_engine_that_cannot_load_the_format() -> None:
    with pytest.raises(EngineUnavailable) as caught:
        choose(model("gguf"), "vllm", machine(nvidia=True))
    assert str(caught.value) == (
        "engine vllm cannot load m-gguf: it is a gguf model and vllm loads safetensors; remove "
        "the engine setting to use llama.cpp, or pick a safetensors build of the model")


def test_a_preferred_engine_that_cannot_run_here() -> None:
    with pytest.raises(EngineUnavailable) as caught:
        choose(model("safetensors"), "vllm", machine())
    assert str(caught.value) == "engine vllm cannot run here: vLLM needs an NVIDIA GPU"


def test_an_unknown_engine() -> None:
    with pytest.raises(EngineUnavailable) as caught:
        by_name("ollama", machine())
    assert str(caught.value) == "unknown engine 'ollama': use one of llama.cpp, mlx-lm, vllm"


def test_the_registry() -> None:
    assert [type(b) for b in BACKENDS] == [LlamaCppBackend, MlxBackend, VllmBackend,
                                           FasterWhisperBackend, DiffusersBackend]
    assert {fmt for b in BACKENDS for fmt in b.formats} == {"gguf", "mlx", "safetensors",
                                                             "ctranslate2", "diffusers"}
    assert [b.name for b in BACKENDS] == ["llama.cpp", "mlx-lm", "vllm", "faster-whisper",
                                          "diffusers"]


def test_here_gguf_runs_and_the_others_say_why_not() -> None:
    """This machine (Linux CI, no GPU): the real backends' problems, each one line."""
    assert choose(model("gguf")).name == "llama.cpp"
    if sys.platform != "darwin":
        with pytest.raises(EngineUnavailable, match="Apple Silicon"):
            choose(model("mlx"))
    if VllmBackend().problem() is not None:
        with pytest.raises(EngineUnavailable) as caught:
            choose(model("safetensors"))
        assert "\n" not in str(caught.value)


def test_importing_the_engines_imports_no_engine_library() -> None:
    code = ("import sys; import darkbloom.provider.engines.select, darkbloom.provider.engines.mlx, "
            "darkbloom.provider.engines.vllm; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('vllm', 'mlx', 'mlx_lm', 'llama_cpp', 'torch', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.strip() == "[]"
