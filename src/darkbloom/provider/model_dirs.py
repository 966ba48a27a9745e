"""Model directories: MLX conversions and Hugging Face safetensors checkpoints (provider.md "Models").

A model directory holds ``config.json`` and at least one ``*.safetensors``. Two places have them:
sub-directories of the models directory, and snapshots in the Hugging Face hub cache
(``models--ORG--NAME/snapshots/<rev>/``, the revision ``refs/main`` names; id ``ORG/NAME``). The
cache is only read where an engine that loads these formats can run (mlx-lm, vLLM): elsewhere
nothing could serve them, and ``models list`` would offer what ``serve`` must refuse.

It is an MLX model when config.json carries mlx-lm's ``quantization`` object (``group_size`` and
``bits``: what mlx-lm's convert writes) or the repo is under ``mlx-community/``; else a plain
safetensors checkpoint. Its weight hash is SHA-256 over the sorted weight, tokenizer, config and
chat-template files, each framed as ``name NUL size NUL content``, cached (keyed by every file's
name, size and mtime) so ``models list`` and ``serve`` read gigabytes once, not on every run.

Everything is bounded: directories looked at, entries listed per directory, config.json's size and
nesting; a file that is a link out of its model's directory (or, in the cache, out of its repo)
disqualifies the model rather than being read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from darkbloom.inference.catalog import MODEL_ID
from darkbloom.provider.config_files import make_private_dir
from darkbloom.provider.engines.base import LocalModel, ModelFormat

MAX_MODEL_DIRS = 256  # per place (models directory, hub cache)
MAX_DIR_ENTRIES = 4096  # entries listed in one model directory
CONFIG_MAX = 1 << 20  # config.json bytes (mlx-lm's mixed quantization makes it long, not this long)
MAX_CONTEXT = 1 << 21
DEFAULT_CONTEXT = 4096
SIDECAR_MAX = 64 * 1024
HASHED = ("*.safetensors", "tokenizer*.json", "tokenizer.model", "config.json",
          "generation_config.json", "chat_template.jinja", "chat_template.json")
_REVISION = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_CHUNK = 1 << 20


def read_json(path: Path, limit: int = SIDECAR_MAX) -> dict[str, Any] | None:
    """A JSON object of at most ``limit`` bytes, else None (missing, too big, garbage, too deep)."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
        value = json.loads(raw) if len(raw) <= limit else None
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file); a read-only directory only costs the cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") \
        else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


def directory_engine_runs() -> bool:
    """Whether mlx-lm or vLLM could run here (their cheap ``problem()`` checks, no import)."""
    from darkbloom.provider.engines.select import BACKENDS

    return any(b.problem() is None for b in BACKENDS
               if b.formats & {"mlx", "safetensors", "diffusers", "ctranslate2"})


def _subdirs(parent: Path, *, follow_links: bool) -> list[os.DirEntry[str]]:
    """The first MAX_MODEL_DIRS sub-directories (by name), hidden ones left out."""
    try:
        with os.scandir(parent) as it:
            entries = []
            for entry in it:
                with contextlib.suppress(OSError):
                    if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=follow_links):
                        entries.append(entry)
    except OSError:
        return []
    return sorted(entries, key=lambda e: e.name)[:MAX_MODEL_DIRS]


def model_files(path: Path, root: Path) -> dict[str, Path] | None:
    """The hashed files of a model directory by name, or None when it is no model (no config.json
    or no weights, too many entries, a hashed file that is not a regular file inside ``root``)."""
    files: dict[str, Path] = {}
    try:
        with os.scandir(path) as it:
            for count, entry in enumerate(it):
                if count >= MAX_DIR_ENTRIES:
                    return None
                if any(fnmatchcase(entry.name, pattern) for pattern in HASHED):
                    files[entry.name] = Path(entry.path)
        real_root = root.resolve()
        for file in files.values():
            real = file.resolve()
            if not real.is_relative_to(real_root) or not real.is_file():
                return None
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        return None
    return files


def models_dir_models(models_dir: Path, hashes: Path) -> Iterator[LocalModel]:
    """Model directories in the models directory, each named after its directory."""
    for entry in _subdirs(models_dir, follow_links=True):
        path = Path(entry.path)
        model = _model(entry.name, path, path, hashes)
        if model is not None:
            yield model


def hf_cache_models(cache: Path, hashes: Path) -> Iterator[LocalModel]:
    """The current snapshot (refs/main) of each model repo in the hub cache."""
    for entry in _subdirs(cache, follow_links=False):
        if not entry.name.startswith("models--"):
            continue
        parts = entry.name.removeprefix("models--").split("--")
        if len(parts) > 2 or not all(parts):
            continue
        repo = Path(entry.path)
        snapshot = _snapshot(repo)
        if snapshot is not None:
            model = _model("/".join(parts), snapshot, repo, hashes)
            if model is not None:
                yield model


def _snapshot(repo: Path) -> Path | None:
    """The revision refs/main names; without refs/main, the only snapshot there is."""
    try:
        with (repo / "refs" / "main").open("rb") as f:
            revision: str | None = f.read(256).decode("ascii", "replace").strip()
    except OSError:
        revision = None
    if revision is None:
        snapshots = _subdirs(repo / "snapshots", follow_links=False)
        revision = snapshots[0].name if len(snapshots) == 1 else None
    if revision is None or not _REVISION.fullmatch(revision) or revision in (".", ".."):
        return None
    path = repo / "snapshots" / revision
    return path if path.is_dir() and not path.is_symlink() else None


# Media model directories (media.md): a CTranslate2 Whisper conversion (faster-whisper's layout)
# and a diffusers pipeline (save_pretrained's layout, also a hub snapshot's).
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
                 "preprocessor_config.json")
PIPELINE_HASHED = ("*.safetensors", "*.json", "*.txt", "*.model")
MAX_PIPELINE_PARTS = 16  # component sub-directories of a pipeline (unet, vae, text_encoder, ...)


def _inside(files: dict[str, Path], root: Path) -> bool:
    real_root = root.resolve()
    return all(f.resolve().is_relative_to(real_root) and f.resolve().is_file() for f in files.values())


def whisper_files(path: Path, root: Path) -> dict[str, Path] | None:
    """A CTranslate2 Whisper directory's hashed files, or None when it is not one."""
    try:
        files = {name: path / name for name in WHISPER_FILES if (path / name).is_file()}
        if not {"model.bin", "config.json", "tokenizer.json"} <= files.keys():
            return None  # without its tokenizer faster-whisper would fetch one from the hub
        return files if _inside(files, root) else None
    except (OSError, RuntimeError):
        return None


def pipeline_files(path: Path, root: Path) -> dict[str, Path] | None:
    """A diffusers pipeline directory's hashed files (``component/name`` keys), or None when it
    has no model_index.json or is too large to be one."""
    try:
        if not (path / "model_index.json").is_file():
            return None
        files = {"model_index.json": path / "model_index.json"}
        for part in _subdirs(path, follow_links=False)[:MAX_PIPELINE_PARTS]:
            with os.scandir(part.path) as it:
                for count, entry in enumerate(it):
                    if count >= MAX_DIR_ENTRIES:
                        return None
                    if any(fnmatchcase(entry.name, p) for p in PIPELINE_HASHED):
                        files[f"{part.name}/{entry.name}"] = Path(entry.path)
        return files if _inside(files, root) else None
    except (OSError, RuntimeError):
        return None


def media_dir_model(model_id: str, path: Path, root: Path, hashes: Path) -> LocalModel | None:
    fmt: ModelFormat
    if (files := whisper_files(path, root)) is not None:
        fmt, model_type, quantization = "ctranslate2", "transcription", ""
    elif (files := pipeline_files(path, root)) is not None:
        fmt, model_type, quantization = "diffusers", "image", ""
    else:
        return None
    try:
        size = sum(file.stat().st_size for file in files.values())
        digest = weight_hash(path, files, hash_cache(path, hashes))
    except OSError:
        return None
    return LocalModel(id=model_id, path=path, format=fmt, size_bytes=size, weight_hash=digest,
                      quantization=quantization, context_length=DEFAULT_CONTEXT,
                      model_type=model_type)


def _model(model_id: str, path: Path, root: Path, hashes: Path) -> LocalModel | None:
    if not MODEL_ID.fullmatch(model_id):
        return None
    if (media := media_dir_model(model_id, path, root, hashes)) is not None:
        return media
    files = model_files(path, root)
    if files is None:
        return None
    config = read_json(files["config.json"], CONFIG_MAX)
    if config is None:
        return None
    try:
        size = sum(file.stat().st_size for name, file in files.items()
                   if name.endswith(".safetensors"))
        digest = weight_hash(path, files, hash_cache(path, hashes))
    except OSError:
        return None
    fmt, quantization = _format(model_id, config)
    context = config.get("max_position_embeddings")
    return LocalModel(
        id=model_id, path=path, format=fmt, size_bytes=size, weight_hash=digest,
        quantization=quantization,
        context_length=min(context, MAX_CONTEXT)
        if isinstance(context, int) and not isinstance(context, bool) and context > 0
        else DEFAULT_CONTEXT,
    )


def _format(model_id: str, config: dict[str, Any]) -> tuple[ModelFormat, str]:
    quant = config.get("quantization")
    if isinstance(quant, dict) and _count(quant.get("group_size")) and _count(quant.get("bits")):
        return "mlx", f"{quant['bits']}bit"
    if model_id.startswith("mlx-community/"):
        return "mlx", ""
    hf_quant = config.get("quantization_config")
    method = hf_quant.get("quant_method") if isinstance(hf_quant, dict) else None
    return "safetensors", method[:32] if isinstance(method, str) and method.isprintable() else ""


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16


def hash_cache(path: Path, hashes: Path) -> Path:
    """Where a model directory's hash is cached: with the store's other hashes, named after the
    directory's real path (a hub snapshot is huggingface-cli's, and may be read-only)."""
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:64]
    return hashes / f"dir-{name}.{tag}.json"


def weight_hash(path: Path, files: dict[str, Path], cache: Path) -> str:
    """SHA-256 over the sorted files (``name NUL size NUL content`` each), read from ``cache``
    while every file's name, size and mtime still match."""
    key: list[tuple[str, int, int]] = []
    for name in sorted(files):
        info = files[name].stat()
        key.append((name, info.st_size, info.st_mtime_ns))
    cached = read_json(cache, SIDECAR_MAX) or {}
    known = cached.get("sha256")
    if cached.get("files") == [list(k) for k in key] and isinstance(known, str) \
            and re.fullmatch(r"[0-9a-f]{64}", known):
        return known
    digest = hashlib.sha256()
    for name, size, _ in key:
        digest.update(f"{name}\0{size}\0".encode())
        with files[name].open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    value = digest.hexdigest()
    if len(key) <= 512:  # a cache entry stays small (SIDECAR_MAX)
        with contextlib.suppress(OSError):
            make_private_dir(cache.parent)
        write_json(cache, {"files": [list(k) for k in key], "sha256": value})
    return value
