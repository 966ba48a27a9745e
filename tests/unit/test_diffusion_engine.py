"""The diffusers engine on real diffusers/PyTorch CPU, with the tiny random-weight pipeline (a test
double, tests/media/tiny_pipeline.py) loaded through DiffusersBackend.load, the real loading path."""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from darkbloom.inference.media_request import ImageRequest
from darkbloom.provider.engines.base import Cancelled, LocalModel
from darkbloom.provider.engines.diffusion import (
    DiffusersBackend,
    DiffusersImageModel,
    is_pipeline_dir,
    native_size,
)
from tests.media.tiny_pipeline import TEST_DOUBLE_ID, tiny_pipeline_dir

__all__ = ["tiny_pipeline_dir"]  # the session fixture, imported so pytest finds it here

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT = "a lighthouse on a cliff at dusk"


def _local(path: Path, model_id: str = TEST_DOUBLE_ID) -> LocalModel:
    return LocalModel(model_id, path, "diffusers", 0, model_type="image")


@pytest.fixture(scope="module")
def engine(tiny_pipeline_dir: Path) -> Iterator[DiffusersImageModel]:
    backend = DiffusersBackend()
    assert backend.problem() is None
    loaded = backend.load(_local(tiny_pipeline_dir), slots=4, threads=None)
    yield loaded
    loaded.close()


def _request(**fields: object) -> ImageRequest:
    values: dict[str, object] = {"model": TEST_DOUBLE_ID, "prompt": PROMPT, "width": 64,
                                 "height": 64, "n": 1, "steps": 2, "seed": 1}
    values.update(fields)
    return ImageRequest(**values)  # type: ignore[arg-type]


def _generate(engine: DiffusersImageModel, request: ImageRequest) -> list[bytes]:
    return engine.generate_images(request, threading.Event(), lambda done, total: None)


def _chunk_types(png: bytes) -> list[bytes]:
    assert png.startswith(PNG_SIGNATURE)
    types, offset = [], len(PNG_SIGNATURE)
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        types.append(png[offset + 4:offset + 8])
        offset += 12 + length
    return types


def test_pipeline_dir_is_recognised_and_sized(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    assert is_pipeline_dir(tiny_pipeline_dir)
    assert native_size(tiny_pipeline_dir) == (64, 64)  # UNet sample_size 8 × VAE factor 8
    assert not is_pipeline_dir(tmp_path)
    assert native_size(tmp_path) is None


def test_one_slot_whatever_was_asked(engine: DiffusersImageModel) -> None:
    assert engine.slots == 1
    assert engine.busy_slots == 0


@pytest.mark.parametrize(("width", "height"), [(64, 64), (128, 96)])
def test_generates_n_pngs_of_the_asked_size(engine: DiffusersImageModel, width: int,
                                            height: int) -> None:
    images = _generate(engine, _request(width=width, height=height, n=2))
    assert len(images) == 2
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        decoded = Image.open(io.BytesIO(png))
        assert decoded.format == "PNG"
        assert decoded.size == (width, height)
    assert images[0] != images[1]  # image i is seeded seed + i
    assert engine.busy_slots == 0


def test_same_seed_same_bytes_and_other_seed_other_bytes(engine: DiffusersImageModel) -> None:
    first = _generate(engine, _request(seed=42, n=2))
    assert _generate(engine, _request(seed=42, n=2)) == first
    # Image i comes from seed + i in its own call: it does not depend on n.
    assert _generate(engine, _request(seed=42, n=1)) == first[:1]
    assert _generate(engine, _request(seed=43, n=1)) == first[1:]
    assert _generate(engine, _request(seed=7, n=1))[0] not in first


def test_no_seed_draws_a_fresh_one(engine: DiffusersImageModel) -> None:
    assert _generate(engine, _request(seed=None)) != _generate(engine, _request(seed=None))


def test_negative_prompt_is_used(engine: DiffusersImageModel) -> None:
    plain = _generate(engine, _request(seed=5))
    negated = _generate(engine, _request(seed=5, negative_prompt="fog, blur"))
    assert len(negated) == 1 and Image.open(io.BytesIO(negated[0])).size == (64, 64)
    assert negated != plain  # the unconditional branch of guidance now encodes it


def test_steps_are_honoured_and_reported(engine: DiffusersImageModel) -> None:
    calls: list[tuple[float, float]] = []
    images = engine.generate_images(_request(steps=3, n=2), threading.Event(),
                                    lambda done, total: calls.append((done, total)))
    assert len(images) == 2
    assert calls == [(float(i), 6.0) for i in range(1, 7)]  # steps × n, over the whole request


def test_cancel_between_steps_stops_with_no_images(engine: DiffusersImageModel) -> None:
    cancel = threading.Event()
    calls: list[tuple[float, float]] = []

    def progress(done: float, total: float) -> None:
        calls.append((done, total))
        if done == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        engine.generate_images(_request(steps=10, n=2), cancel, progress)
    assert calls == [(1.0, 20.0), (2.0, 20.0)]  # stopped at the first step boundary after it
    assert engine.busy_slots == 0
    # The pipeline is whole afterwards: the next job runs to the end.
    assert len(_generate(engine, _request())) == 1


def test_cancel_before_start_does_no_work(engine: DiffusersImageModel) -> None:
    cancel = threading.Event()
    cancel.set()
    calls: list[tuple[float, float]] = []
    with pytest.raises(Cancelled):
        engine.generate_images(_request(), cancel, lambda d, t: calls.append((d, t)))
    assert calls == []


def test_pngs_carry_no_prompt(engine: DiffusersImageModel) -> None:
    secret = "zebra-crossing-unique-prompt-text"
    images = _generate(engine, _request(prompt=secret, negative_prompt="another-secret-words"))
    for png in images:
        assert set(_chunk_types(png)) <= {b"IHDR", b"IDAT", b"IEND"}
        assert secret.encode() not in png and b"another-secret" not in png
        assert not Image.open(io.BytesIO(png)).info  # no text, no parameters


def test_a_directory_that_is_not_a_text_to_image_pipeline_is_refused(tmp_path: Path) -> None:
    backend = DiffusersBackend()
    with pytest.raises(ValueError, match=r"model_index\.json"):
        backend.load(_local(tmp_path), slots=1, threads=None)
    other = tmp_path / "img2vid"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableVideoDiffusionPipeline"}))
    assert not is_pipeline_dir(other)
    with pytest.raises(ValueError, match="not a text-to-image pipeline"):
        backend.load(_local(other), slots=1, threads=None)
    (other / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model_index\.json"):
        backend.load(_local(other), slots=1, threads=None)


def test_missing_optional_components_load_as_none(tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    """A directory whose model_index.json names a safety checker it does not hold still loads."""
    copy = tmp_path / "no-checker"
    copy.mkdir()
    for item in tiny_pipeline_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / "model_index.json").unlink()
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (copy / "model_index.json").write_text(json.dumps(index))
    loaded = DiffusersBackend().load(_local(copy), slots=1, threads=None)
    try:
        assert len(_generate(loaded, _request())) == 1
    finally:
        loaded.close()


def test_one_job_at_a_time(engine: DiffusersImageModel) -> None:
    """Two callers at once: the second waits for the first; busy_slots never passes slots."""
    busy: list[int] = []
    results: list[list[bytes]] = []

    def job(seed: int) -> None:
        results.append(engine.generate_images(_request(seed=seed, steps=3), threading.Event(),
                                              lambda done, total: busy.append(engine.busy_slots)))

    threads = [threading.Thread(target=job, args=(seed,)) for seed in (11, 12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and all(len(images) == 1 for images in results)
    assert busy and set(busy) == {1}
    assert engine.busy_slots == 0


def test_loads_from_a_hugging_face_cache_snapshot(tiny_pipeline_dir: Path, tmp_path: Path,
                                                  engine: DiffusersImageModel) -> None:
    """The hub cache's layout: snapshots/<revision>/... are symlinks into blobs/."""
    repo = tmp_path / "hub" / "models--darkbloom--test-double-tiny-sd"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    for number, source in enumerate(sorted(p for p in tiny_pipeline_dir.rglob("*") if p.is_file())):
        blob = blobs / f"blob{number}"
        blob.write_bytes(source.read_bytes())
        link = snapshot / source.relative_to(tiny_pipeline_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    assert is_pipeline_dir(snapshot) and native_size(snapshot) == (64, 64)
    loaded = DiffusersBackend().load(_local(snapshot), slots=1, threads=None)
    try:
        assert _generate(loaded, _request(seed=3)) == _generate(engine, _request(seed=3))
    finally:
        loaded.close()
