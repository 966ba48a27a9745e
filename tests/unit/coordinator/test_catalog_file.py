"""DARKBLOOM_CATALOG_FILE: operator-added catalog entries, validated and bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from darkbloom.coordinator.catalog_file import (
    MAX_ENTRIES,
    MAX_FILE_BYTES,
    CatalogFileError,
    build_catalog,
    load_catalog_file,
)
from darkbloom.inference.catalog import BUILTIN_MODELS, DEFAULT_MODEL

ENTRY: dict[str, Any] = {
    "id": "tiny-1b", "display_name": "Tiny 1B", "aliases": ["org/Tiny-1B"], "context_length": 4096,
    "quantization": "Q4_K_M", "size_bytes": 700_000_000, "sha256": "ab" * 32,
    "filename": "tiny-1b.Q4_K_M.gguf", "download_url": "https://models.example.com/tiny-1b.gguf",
}


def write(tmp_path: Path, entries: Any, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def test_a_json_file_adds_models_after_the_built_in_ones(tmp_path: Path) -> None:
    catalog = build_catalog(write(tmp_path, [ENTRY]))
    assert [m.id for m in catalog.models] == [m.id for m in BUILTIN_MODELS] + ["tiny-1b"]
    model = catalog.resolve("org/Tiny-1B")
    assert model is not None and model.download_url == ENTRY["download_url"]
    assert model.weight_hash == "ab" * 32 and model.package == "" and model.weights_path() is None
    assert model.input_price == DEFAULT_MODEL.input_price  # the catalog's default price


def test_a_toml_file_with_models_tables(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text('[[models]]\nid = "tiny-1b"\ncontext_length = 4096\nsize_bytes = 10\n'
                    f'sha256 = "{"cd" * 32}"\nfilename = "t.gguf"\n'
                    'download_url = "http://127.0.0.1:9/t.gguf"\ninput_price = 7\n')
    (model,) = load_catalog_file(path)
    assert model.id == "tiny-1b" and model.display_name == "tiny-1b" and model.input_price == 7


def test_no_file_is_the_built_in_catalog() -> None:
    assert build_catalog(None).models == BUILTIN_MODELS


@pytest.mark.parametrize(("change", "complaint"), [
    ({"filename": "../escape.gguf"}, "filename"),
    ({"filename": "weights.bin"}, "filename"),
    ({"download_url": "file:///etc/passwd"}, "download_url"),
    ({"sha256": "AB" * 32}, "sha256"),
    ({"size_bytes": 0}, "size_bytes"),
    ({"size_bytes": "10"}, "size_bytes"),
    ({"id": "has space"}, "id"),
    ({"unknown": 1}, "unknown"),
    ({"aliases": ["a"] * 17}, "aliases"),
])
def test_a_bad_entry_is_refused_with_one_line(tmp_path: Path, change: dict[str, Any],
                                              complaint: str) -> None:
    with pytest.raises(CatalogFileError, match=complaint) as caught:
        load_catalog_file(write(tmp_path, [{**ENTRY, **change}]))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"catalog file {tmp_path}")
    assert "model 1 (" in message


def test_a_name_taken_by_a_built_in_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match="already taken by smollm2-135m"):
        build_catalog(write(tmp_path, [{**ENTRY, "aliases": [DEFAULT_MODEL.aliases[0]]}]))
    with pytest.raises(CatalogFileError, match="already taken by tiny-1b"):
        build_catalog(write(tmp_path, [ENTRY, {**ENTRY, "aliases": []}]))


def test_the_file_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match=f"more than {MAX_ENTRIES} models"):
        load_catalog_file(write(tmp_path, [ENTRY] * (MAX_ENTRIES + 1)))
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(CatalogFileError, match="too large"):
        load_catalog_file(big)


@pytest.mark.parametrize("text", ["{not json", '"a string"', '{"other": []}'])
def test_unreadable_or_misshapen_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(CatalogFileError, match="catalog file"):
        load_catalog_file(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match="no such file"):
        load_catalog_file(tmp_path / "absent.json")
