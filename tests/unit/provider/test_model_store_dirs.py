"""Model directories (model_dirs.py via ModelStore): MLX and safetensors models in the models
directory and in a Hugging Face hub cache, built small in tmp; their format, id, size, context,
hash (stable, cached, changing with a file), the bounds, garbage skipped, `remove`, and the engine
`serve` picks for them."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from darkbloom.config import ProviderSettings
from darkbloom.inference.catalog import Catalog
from darkbloom.provider import model_dirs
from darkbloom.provider.engines import mlx as mlx_engine
from darkbloom.provider.engines import vllm as vllm_engine
from darkbloom.provider.model_dirs import hf_hub_cache
from darkbloom.provider.model_store import ModelStore, StoreError
from darkbloom.provider.runtime import model_host

from .engines import mlx_standin, vllm_standin

MLX_CONFIG = {"model_type": "llama", "max_position_embeddings": 8192,
              "quantization": {"group_size": 64, "bits": 4}}
PLAIN_CONFIG = {"model_type": "llama", "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
REV = "0123456789abcdef0123456789abcdef01234567"


def write_model(path: Path, config: dict[str, object] | str, weights: bytes = b"w" * 10) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text('{"t": 1}')
    (path / "README.md").write_text("not hashed")
    return path


def hub_model(cache: Path, repo: str, config: dict[str, object] | str, rev: str = REV,
              weights: bytes = b"w" * 10) -> Path:
    """A repo laid out as huggingface_hub does: snapshot files are links into ../../blobs."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    (root / "blobs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / rev
    snapshot.mkdir(parents=True)
    files = {"config.json": config if isinstance(config, str) else json.dumps(config),
             "model.safetensors": weights, "tokenizer.json": '{"t": 1}'}
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "models", tmp_path / "hub"


def store(places: tuple[Path, Path], *, hf: bool = True) -> ModelStore:
    models, hub = places
    models.mkdir(exist_ok=True)
    return ModelStore(models, Catalog([]), hf_cache=hub if hf else None)


def by_id(s: ModelStore) -> dict[str, object]:
    return {m.id: m for m in s.installed()}


def test_discovery_format_ids_size_and_context(places: tuple[Path, Path]) -> None:
    models, hub = places
    write_model(models / "local-mlx", MLX_CONFIG, b"a" * 7)
    write_model(models / "local-plain", PLAIN_CONFIG)
    snap_mlx = hub_model(hub, "mlx-community/Tiny-bf16", {"model_type": "llama"})  # no quantization
    snap_q = hub_model(hub, "someone/Tiny-4bit", MLX_CONFIG)
    hub_model(hub, "org/Plain", {**PLAIN_CONFIG, "quantization_config": {"quant_method": "awq"}})
    hub_model(hub, "gpt2", {"max_position_embeddings": 10**9})  # no org; a silly context
    s = store(places)
    found = {m.id: m for m in s.installed()}
    assert sorted(found) == ["gpt2", "local-mlx", "local-plain", "mlx-community/Tiny-bf16",
                             "org/Plain", "someone/Tiny-4bit"]
    assert {i: m.format for i, m in found.items()} == {
        "gpt2": "safetensors", "local-mlx": "mlx", "local-plain": "safetensors",
        "mlx-community/Tiny-bf16": "mlx", "org/Plain": "safetensors", "someone/Tiny-4bit": "mlx"}
    assert found["local-mlx"].path == models / "local-mlx"
    assert found["local-mlx"].size_bytes == 7  # the weights only
    assert found["local-mlx"].quantization == "4bit"
    assert found["org/Plain"].quantization == "awq"
    assert found["local-mlx"].context_length == 8192
    assert found["mlx-community/Tiny-bf16"].context_length == 4096  # none given
    assert found["gpt2"].context_length == model_dirs.MAX_CONTEXT
    assert found["mlx-community/Tiny-bf16"].path == snap_mlx
    assert found["someone/Tiny-4bit"].path == snap_q
    assert s.find("org/Plain") == found["org/Plain"]
    assert s.find("org/Nope") is None
    assert not s.is_packaged(found["local-mlx"]) and not s.is_packaged(found["org/Plain"])


def test_the_hub_cache_is_read_only_when_asked_or_an_engine_could_use_it(
        places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    models, hub = places
    hub_model(hub, "org/Plain", PLAIN_CONFIG)
    write_model(models / "local", PLAIN_CONFIG)
    assert sorted(by_id(store(places, hf=False))) == ["local"]  # the models dir is always read
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(model_dirs, "directory_engine_runs", lambda: False)
    monkeypatch.setattr("darkbloom.provider.model_store.directory_engine_runs", lambda: False)
    assert ModelStore(models, Catalog([])).hf_cache is None
    monkeypatch.setattr("darkbloom.provider.model_store.directory_engine_runs", lambda: True)
    auto = ModelStore(models, Catalog([]))
    assert auto.hf_cache == hub and sorted(by_id(auto)) == ["local", "org/Plain"]


def test_on_this_linux_box_without_gpu_the_cache_is_not_scanned() -> None:
    if model_dirs.directory_engine_runs():
        pytest.skip("mlx-lm or vLLM can run on this machine")
    assert ModelStore(Path("/nonexistent"), Catalog([])).hf_cache is None


def test_where_the_hub_cache_is() -> None:
    assert hf_hub_cache({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}) == Path("/c")
    assert hf_hub_cache({"HF_HOME": "/h"}) == Path("/h/hub")
    assert hf_hub_cache({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert hf_hub_cache({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_refs_main_picks_the_revision(places: tuple[Path, Path]) -> None:
    _, hub = places
    old = hub_model(hub, "org/M", PLAIN_CONFIG, rev="a" * 40, weights=b"old")
    new_rev = "b" * 40
    (hub / "models--org--M" / "snapshots" / new_rev).mkdir()
    for f in old.iterdir():
        (hub / "models--org--M" / "snapshots" / new_rev / f.name).symlink_to(os.readlink(f))
    (hub / "models--org--M" / "refs" / "main").write_text(new_rev + "\n")
    model = store(places).find("org/M")
    assert model is not None and model.path.name == new_rev
    (hub / "models--org--M" / "refs" / "main").write_text("../../../etc")  # not a revision
    assert store(places).find("org/M") is None
    (hub / "models--org--M" / "refs" / "main").unlink()  # two snapshots, no ref: which? none
    assert store(places).find("org/M") is None


def test_the_hash_is_stable_cached_and_follows_the_files(places: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    models, _ = places
    path = write_model(models / "m", PLAIN_CONFIG)
    first = by_id(store(places))["m"].weight_hash  # type: ignore[attr-defined]
    # The spec's framing over the sorted hashed files: README.md is not one of them.
    expected = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        data = (path / name).read_bytes()
        expected.update(f"{name}\0{len(data)}\0".encode() + data)
    assert first == expected.hexdigest()
    (path / "README.md").write_text("edited")
    assert by_id(store(places))["m"].weight_hash == first  # type: ignore[attr-defined]

    opened: list[str] = []
    real_open = Path.open

    def spy(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", spy)
    assert by_id(store(places))["m"].weight_hash == first  # type: ignore[attr-defined]
    assert "model.safetensors" not in opened  # from the cache: the weights were not read
    monkeypatch.undo()

    (path / "model.safetensors").write_bytes(b"x" * 10)  # same size, new content and mtime
    os.utime(path / "model.safetensors", ns=(1, 1))
    changed = by_id(store(places))["m"].weight_hash  # type: ignore[attr-defined]
    assert changed != first
    (path / "chat_template.jinja").write_text("{{ x }}")  # a new hashed file counts too
    assert by_id(store(places))["m"].weight_hash not in (first, changed)  # type: ignore[attr-defined]


def test_garbage_and_half_models_are_skipped(places: tuple[Path, Path]) -> None:
    models, hub = places
    write_model(models / "good", PLAIN_CONFIG)
    write_model(models / "garbage", "{not json")
    write_model(models / "array", "[1, 2]")
    write_model(models / "deep", "[" * 100_000)
    write_model(models / "huge", json.dumps({"pad": "x" * (model_dirs.CONFIG_MAX + 1)}))
    (models / "no-weights").mkdir()
    (models / "no-weights" / "config.json").write_text("{}")
    (models / "no-config").mkdir()
    (models / "no-config" / "model.safetensors").write_bytes(b"w")
    write_model(models / "bad id!", PLAIN_CONFIG)
    write_model(models / ".hidden", PLAIN_CONFIG)
    (models / "stray.safetensors").write_bytes(b"w")
    hub_model(hub, "a--b--c", PLAIN_CONFIG)  # three parts: not an ORG/NAME repo
    (hub / "datasets--org--d").mkdir(parents=True)
    (hub / "models--org--empty").mkdir()
    assert sorted(by_id(store(places))) == ["good"]


def test_links_out_of_the_model_or_the_cache_are_not_followed(places: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    models, hub = places
    secret = tmp_path / "elsewhere"
    write_model(secret, PLAIN_CONFIG)
    snap = hub_model(hub, "org/Leaky", PLAIN_CONFIG)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(secret / "model.safetensors")
    (hub / "models--org--Linked").symlink_to(hub / "models--org--Leaky")  # a linked repo dir
    local = write_model(models / "local", PLAIN_CONFIG)
    (local / "tokenizer.json").unlink()
    (local / "tokenizer.json").symlink_to(secret / "tokenizer.json")
    (models / "linked").symlink_to(secret)  # the operator's own link to a model dir: fine
    assert sorted(by_id(store(places))) == ["linked"]


def test_scans_are_bounded(places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    models, _ = places
    for i in range(5):
        write_model(models / f"m{i}", PLAIN_CONFIG)
    monkeypatch.setattr(model_dirs, "MAX_MODEL_DIRS", 3)
    assert sorted(by_id(store(places))) == ["m0", "m1", "m2"]
    monkeypatch.setattr(model_dirs, "MAX_DIR_ENTRIES", 4)  # each has 4 entries, m0 now 5
    (models / "m0" / "extra.txt").write_text("x")
    assert sorted(by_id(store(places))) == ["m1", "m2"]


def test_a_gguf_file_keeps_its_id_over_a_directory(places: tuple[Path, Path]) -> None:
    models, _ = places
    write_model(models / "same", PLAIN_CONFIG)
    (models / "same.gguf").write_bytes(b"GGUF" + b"\0" * 8)
    model = store(places).find("same")
    assert model is not None and model.format == "gguf"


def test_remove_a_models_dir_model_but_not_the_hub_cache_s(places: tuple[Path, Path]) -> None:
    models, hub = places
    write_model(models / "local", MLX_CONFIG)
    snap = hub_model(hub, "org/Plain", PLAIN_CONFIG)
    s = store(places)
    assert s.find("local") is not None
    caches = list((models / ".hashes").glob("dir-local.*.json"))
    assert len(caches) == 1
    deleted = s.remove("local")
    assert deleted == [models / "local", caches[0]]
    assert not (models / "local").exists() and not caches[0].exists()
    assert s.find("local") is None
    with pytest.raises(StoreError) as caught:
        s.remove("org/Plain")
    message = str(caught.value)
    assert "\n" not in message and "huggingface-cli delete-cache" in message
    assert (snap / "model.safetensors").read_bytes() == b"w" * 10  # untouched


def test_remove_a_linked_model_dir_removes_the_link_only(places: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    models, _ = places
    target = write_model(tmp_path / "mine", PLAIN_CONFIG)
    s = store(places)
    (models / "mine").symlink_to(target)
    assert s.remove("mine")[0] == models / "mine"
    assert not (models / "mine").exists() and (target / "model.safetensors").is_file()


def test_serve_runs_an_mlx_hub_model_on_mlx_lm(places: tuple[Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, hub = places
    snap = hub_model(hub, "mlx-community/Tiny-4bit", MLX_CONFIG)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(mlx_engine.platform, "machine", lambda: "arm64")
    calls = mlx_standin.install(monkeypatch, [*mlx_standin.ids("hi"), mlx_standin.EOS])
    monkeypatch.setattr(vllm_engine, "_has_nvidia_gpu", lambda: False)
    host = model_host(ProviderSettings(models=["mlx-community/Tiny-4bit"]), store(places))
    assert host._served[0].backend.name == "mlx-lm"
    host.load_all()
    assert calls.load[0][0] == str(snap)  # mlx-lm loads the snapshot directory
    assert host.serves("mlx-community/Tiny-4bit")
    host.close()


def test_serve_runs_a_safetensors_dir_on_vllm_else_on_mlx_lm(places: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    models, _ = places
    write_model(models / "plain", PLAIN_CONFIG)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(mlx_engine.platform, "machine", lambda: "arm64")
    mlx_standin.install(monkeypatch, [mlx_standin.EOS])
    vllm_standin.install(monkeypatch, [vllm_standin.EOS])
    settings = ProviderSettings(models=["plain"])
    device = tmp_path / "nvidia0"
    device.write_text("")
    monkeypatch.setattr(vllm_engine, "NVIDIA_DEVICE", device)
    assert model_host(settings, store(places))._served[0].backend.name == "vllm"
    device.unlink()
    monkeypatch.setattr(vllm_engine.shutil, "which", lambda name: None)
    assert model_host(settings, store(places))._served[0].backend.name == "mlx-lm"
