"""The provider's model store against a real HTTP server (tests/range_server.py)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from darkbloom.inference.catalog import DEFAULT_MODEL, WHISPER_TINY_EN
from darkbloom.provider.model_store import DownloadSpec, ModelStore, StoreError, fits
from tests.range_server import serving

BLOB = os.urandom(3 * 2**20 + 12345)  # several chunks, not a multiple of one
SHA = hashlib.sha256(BLOB).hexdigest()
NAME = "tiny-q4.gguf"


def spec(url: str, **changes: object) -> DownloadSpec:
    fields: dict[str, object] = {"id": "tiny", "filename": NAME, "download_url": url, "sha256": SHA,
                                 "size_bytes": len(BLOB), "aliases": ("tiny-alias",),
                                 "quantization": "Q4_0", "context_length": 2048}
    fields.update(changes)
    return DownloadSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def test_download_installs_a_checked_file_and_lists_it(store: ModelStore) -> None:
    seen: list[tuple[int, int]] = []
    with serving({NAME: BLOB}) as server:
        model = store.download(spec(server.url(NAME)), lambda done, total: seen.append((done, total)))
    assert server.ranges == [None]
    assert model.id == "tiny" and model.weight_hash == SHA and model.size_bytes == len(BLOB)
    assert model.path.read_bytes() == BLOB and model.context_length == 2048
    assert not (store.models_dir / (NAME + ".part")).exists()
    assert seen[-1] == (len(BLOB), len(BLOB)) and len(seen) > 2
    assert store.find("tiny-alias") == model
    assert {m.id for m in store.installed()} == {"tiny", DEFAULT_MODEL.id, WHISPER_TINY_EN.id}
    assert not store.is_packaged(model)


def test_a_broken_download_resumes_with_a_range_request(store: ModelStore) -> None:
    cut = 2 * 2**20 + 7
    with serving({NAME: BLOB}, cut_after=cut) as server:
        server.release.set()  # the first transfer stops at `cut` and the connection closes
        with pytest.raises(StoreError, match="run the same command again to resume"):
            store.download(spec(server.url(NAME)))
        part = store.models_dir / (NAME + ".part")
        assert part.stat().st_size == cut
        assert store.find("tiny") is None  # a partial download is not a model
        model = store.download(spec(server.url(NAME)))
    assert server.ranges == [None, f"bytes={cut}-"]
    assert model.path.read_bytes() == BLOB and not part.exists()


def test_a_part_left_by_an_earlier_run_is_continued(store: ModelStore) -> None:
    store.models_dir.mkdir(parents=True)
    (store.models_dir / (NAME + ".part")).write_bytes(BLOB[:1000])
    with serving({NAME: BLOB}) as server:
        store.download(spec(server.url(NAME)))
    assert server.ranges == ["bytes=1000-"]


def test_a_server_without_range_support_restarts_from_zero(store: ModelStore) -> None:
    store.models_dir.mkdir(parents=True)
    (store.models_dir / (NAME + ".part")).write_bytes(b"x" * 1000)  # garbage: must not survive
    with serving({NAME: BLOB}, ignore_range=True) as server:
        model = store.download(spec(server.url(NAME)))
    assert server.ranges == ["bytes=1000-"] and model.path.read_bytes() == BLOB


def test_a_hash_mismatch_deletes_the_part_and_installs_nothing(store: ModelStore) -> None:
    with serving({NAME: BLOB}) as server, pytest.raises(StoreError, match="SHA-256") as caught:
        store.download(spec(server.url(NAME), sha256="0" * 64))
    assert "\n" not in str(caught.value)
    assert list(store.models_dir.glob("tiny*")) == []
    assert store.find("tiny") is None


def test_never_more_than_the_catalog_size_is_written(store: ModelStore) -> None:
    with serving({NAME: BLOB}, extra=b"y" * 2**20) as server, \
            pytest.raises(StoreError, match="more than the catalog's"):
        store.download(spec(server.url(NAME)))
    assert list(store.models_dir.glob("tiny*")) == []


def test_a_catalog_size_larger_than_the_file_is_an_early_end(store: ModelStore) -> None:
    with serving({NAME: BLOB}) as server, pytest.raises(StoreError, match="ended early"):
        store.download(spec(server.url(NAME), size_bytes=len(BLOB) + 10))


def test_a_second_download_of_the_same_model_is_refused_while_one_runs(store: ModelStore) -> None:
    store.models_dir.mkdir(parents=True)
    with (store.models_dir / (NAME + ".part")).open("ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another download of tiny is running"):
            store.download(spec("http://127.0.0.1:9/unused"))


def test_an_unreachable_server_keeps_the_part_for_later(store: ModelStore) -> None:
    store.models_dir.mkdir(parents=True)
    (store.models_dir / (NAME + ".part")).write_bytes(BLOB[:10])
    with serving({}) as server:
        url = server.url(NAME)
    with pytest.raises(StoreError, match="cannot connect"):
        store.download(spec(url))
    assert (store.models_dir / (NAME + ".part")).stat().st_size == 10


def test_the_download_server_saying_404_is_one_line(store: ModelStore) -> None:
    with serving({}) as server, pytest.raises(StoreError, match="HTTP 404"):
        store.download(spec(server.url(NAME)))


@pytest.mark.parametrize("changes", [
    {"filename": "../evil.gguf"}, {"filename": "evil.bin"}, {"filename": ".hidden.gguf"},
    {"download_url": "file:///etc/passwd"}, {"download_url": ""}, {"sha256": "abc"},
    {"size_bytes": 0}, {"size_bytes": 2**41}, {"id": "../x"},
])
def test_a_catalog_entry_is_validated_before_anything_is_written(changes: dict[str, object]) -> None:
    with pytest.raises(StoreError):
        spec("http://127.0.0.1:9/x.gguf", **changes)


def test_from_catalog_reads_the_coordinator_row() -> None:
    row = {"id": "tiny", "filename": NAME, "download_url": "https://example.com/t.gguf",
           "sha256": SHA, "size_bytes": 5, "aliases": ["a", 3], "context_length": "bad"}
    got = DownloadSpec.from_catalog(row)
    assert got.aliases == ("a",) and got.context_length == 4096 and got.size_bytes == 5


def test_the_wheel_model_counts_as_downloaded_and_cannot_be_removed(store: ModelStore) -> None:
    wheel = store.find(DEFAULT_MODEL.id)
    assert wheel is not None and store.is_packaged(wheel)
    assert wheel.weight_hash == DEFAULT_MODEL.weight_hash
    with pytest.raises(StoreError, match=f"pip uninstall {DEFAULT_MODEL.package}"):
        store.remove(DEFAULT_MODEL.aliases[0])
    assert wheel.path.is_file()


def test_remove_deletes_the_file_and_its_sidecars(store: ModelStore) -> None:
    with serving({NAME: BLOB}) as server:
        store.download(spec(server.url(NAME)))
    store.find("tiny")  # writes the hash cache
    deleted = store.remove("tiny")
    assert {p.name for p in deleted} >= {NAME, NAME + ".json", NAME + ".sha256"}
    assert list(store.models_dir.glob(NAME + "*")) == [] and store.find("tiny") is None
    with pytest.raises(StoreError, match="no model 'tiny'"):
        store.remove("tiny")


def test_remove_deletes_a_partial_download_by_id(store: ModelStore) -> None:
    with serving({NAME: BLOB}, cut_after=1000) as server:
        server.release.set()
        with pytest.raises(StoreError):
            store.download(spec(server.url(NAME)))
    assert {p.name for p in store.remove("tiny")} == {NAME + ".part", NAME + ".json"}


def test_the_hash_is_cached_by_size_and_mtime(store: ModelStore) -> None:
    store.models_dir.mkdir(parents=True)
    path = store.models_dir / "dropped.gguf"
    path.write_bytes(b"weights")
    model = store.find("dropped")  # a file dropped in by hand: named after the file
    assert model is not None and model.weight_hash == hashlib.sha256(b"weights").hexdigest()
    cache = path.with_name(path.name + ".sha256")
    forged = {**json.loads(cache.read_text()), "sha256": "f" * 64}
    cache.write_text(json.dumps(forged))
    assert store.weight_hash(path) == "f" * 64  # read from the cache, not the file
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert store.weight_hash(path) == hashlib.sha256(b"weights").hexdigest()


def test_a_file_with_a_catalog_models_weights_takes_its_id(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", catalog=None)
    store.models_dir.mkdir(parents=True)
    wheel = store.find(DEFAULT_MODEL.id)
    assert wheel is not None
    copy = store.models_dir / "renamed.gguf"
    try:
        os.link(wheel.path, copy)
    except OSError:  # another file system
        shutil.copyfile(wheel.path, copy)
    dir_model = store._from_dir(copy)
    assert dir_model is not None and dir_model.id == DEFAULT_MODEL.id


def test_fits_is_size_times_1_2_against_the_budget() -> None:
    assert fits(1000, budget=1200)
    assert not fits(1001, budget=1200)
