"""diffusers engine: text-to-image on PyTorch, CPU.

Loads Stable-Diffusion-shaped pipelines (SD 1.x/2.x: ``StableDiffusionPipeline``; SDXL:
``StableDiffusionXLPipeline``) from a directory in ``save_pretrained`` layout, which is also what a
Hugging Face cache snapshot is. ``AutoPipelineForText2Image`` does the loading: it instantiates the
class model_index.json names and fails loudly when that class has no text-to-image form. Other
families (SD3, Flux, PixArt...) are refused before loading: their ``__call__`` takes other
arguments (no negative prompt, no per-step callback of this shape), so they would need their own
tests first.

Nothing is downloaded: HF_HUB_OFFLINE is set before the hub libraries are imported, and every load
is ``local_files_only``. A pipeline saved without a safety checker loads as it is; one whose
model_index.json names a safety checker or feature extractor that is not on disk loads without it
(a directory holding only the UNet, VAE and text encoder is common); one that ships a safety
checker keeps it, as its operator saved it.

Determinism: the ``n`` images are made one pipeline call each, image ``i`` from a CPU generator
seeded ``seed + i``, so the same seed, prompt and size give byte-identical PNGs on the same
machine, library versions and thread count, and image ``i`` does not depend on ``n`` (one batched
call would make a batch of 2 differ from a batch of 1 in the last bits, and hold n× the activation
memory; it saves only per-call overhead, which a real model's UNet dwarfs). A random seed
(``secrets``) is drawn when the request has none. Progress counts denoising steps over the whole
request: (steps done, steps × n).

One job at a time per loaded pipeline: a diffusers pipeline keeps per-call state on itself
(guidance scale, timesteps, the interrupt flag) and is not thread safe, so ``slots`` is 1 whatever
was asked; a second caller waits for the first.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from darkbloom.inference.media_request import ImageRequest
from darkbloom.provider.engines.base import Cancelled, LocalModel, ModelFormat, ProgressFn
from darkbloom.provider.engines.job_slots import JobSlots

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25  # when the request names none: diffusers' 50 halved (CPU time), clean with DDIM/Euler
# model_index.json ``_class_name``s this engine generates with (see the module docstring).
TEXT_TO_IMAGE_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionXLPipeline"})
_MAX_CONFIG_BYTES = 1 << 20  # model_index.json and component configs are a few KB
_OPTIONAL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or None when it is missing, too large or not an object."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_CONFIG_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def pipeline_class(path: Path) -> str | None:
    """The pipeline class a directory's model_index.json names, or None when it has none."""
    index = _read_json(Path(path) / "model_index.json")
    name = index.get("_class_name") if index is not None else None
    return name if isinstance(name, str) else None


def is_pipeline_dir(path: Path) -> bool:
    """Whether ``path`` holds a text-to-image pipeline this engine loads (cheap: reads one file)."""
    return pipeline_class(path) in TEXT_TO_IMAGE_PIPELINES


def native_size(path: Path) -> tuple[int, int] | None:
    """(width, height) the pipeline was trained at: UNet sample_size × the VAE's scale factor
    (2 per VAE block after the first), or None when the configs do not say."""
    unet = _read_json(Path(path) / "unet" / "config.json")
    vae = _read_json(Path(path) / "vae" / "config.json")
    if unet is None or vae is None:
        return None
    sample, blocks = unet.get("sample_size"), vae.get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        return None
    scale = 2 ** (len(blocks) - 1)
    if isinstance(sample, int) and not isinstance(sample, bool) and sample > 0:
        return sample * scale, sample * scale
    if isinstance(sample, list) and len(sample) == 2 \
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sample):
        return sample[1] * scale, sample[0] * scale  # diffusers sizes are (height, width)
    return None


def _missing_optional_components(path: Path, index: dict[str, Any]) -> dict[str, None]:
    """Optional components model_index.json names but the directory lacks: loaded as None."""
    missing: dict[str, None] = {}
    for name in _OPTIONAL_COMPONENTS:
        entry = index.get(name)
        named = isinstance(entry, list) and any(part is not None for part in entry)
        if named and not (path / name).is_dir():
            missing[name] = None
    return missing


class DiffusersBackend:
    name = "diffusers"
    formats: frozenset[ModelFormat] = frozenset({"diffusers"})

    def problem(self) -> str | None:
        missing = [name for name in ("torch", "diffusers", "transformers")
                   if importlib.util.find_spec(name) is None]
        if missing:
            return (f"{', '.join(missing)} not installed (pip install torch diffusers transformers; "
                    "the CPU build of torch is enough)")
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> DiffusersImageModel:
        return DiffusersImageModel(model, threads=threads)


class DiffusersImageModel:
    """One text-to-image pipeline resident on the CPU; one job at a time."""

    def __init__(self, model: LocalModel, *, threads: int | None = None) -> None:
        path = Path(model.path)
        index = _read_json(path / "model_index.json")
        if index is None:
            raise ValueError(f"{path} is not a diffusers pipeline directory (no readable "
                             "model_index.json)")
        cls = index.get("_class_name")
        if cls not in TEXT_TO_IMAGE_PIPELINES:
            raise ValueError(f"{path} holds a {str(cls)[:80]!r}, not a text-to-image pipeline this "
                             f"engine runs ({', '.join(sorted(TEXT_TO_IMAGE_PIPELINES))})")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        self.model = model
        self._job = JobSlots(1)  # one pipeline call at a time
        self._torch: Any = torch
        # Loading progress bars are noise in a service's log (process-wide switches), and the
        # libraries' warnings can quote the request: CLIP's "the following part of your input
        # was truncated" prints the end of a long prompt. Errors only.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        pipe: Any = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            str(path), local_files_only=True, dtype=torch.float32,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            **_missing_optional_components(path, index))
        if type(pipe).__name__ not in TEXT_TO_IMAGE_PIPELINES:
            raise ValueError(f"{path} loaded as {type(pipe).__name__}, not a text-to-image pipeline "
                             "this engine runs")
        pipe.to("cpu")
        pipe.set_progress_bar_config(disable=True)
        self._pipe: Any = pipe
        log.info("%s loaded as %s on the CPU (%d torch threads)", model.id, type(pipe).__name__,
                 torch.get_num_threads())

    @property
    def slots(self) -> int:
        return 1

    @property
    def busy_slots(self) -> int:
        return self._job.busy

    def generate_images(self, request: ImageRequest, cancel: threading.Event,
                        progress: ProgressFn) -> list[bytes]:
        """``request.n`` PNGs (blocking); Cancelled between denoising steps, never images after,
        and while waiting for the pipeline behind another job."""
        with self._job.held(cancel):
            return self._generate(request, cancel, progress)

    def _generate(self, request: ImageRequest, cancel: threading.Event,
                  progress: ProgressFn) -> list[bytes]:
        if cancel.is_set():
            raise Cancelled()
        pipe, torch = self._pipe, self._torch
        if pipe is None:
            raise RuntimeError(f"{self.model.id} is closed")
        steps = request.steps or DEFAULT_STEPS
        seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
        images: list[bytes] = []
        for index in range(request.n):

            def on_step_end(pipeline: Any, step: int, timestep: Any,
                            kwargs: dict[str, Any], done: int = index) -> dict[str, Any]:
                # PNDM and second-order schedulers run more timesteps than steps: count those.
                per_call = getattr(pipeline, "num_timesteps", None) or steps
                progress(float(done * per_call + step + 1), float(request.n * per_call))
                if cancel.is_set():
                    raise Cancelled()  # propagates out of the pipeline call: no decode, no image
                return kwargs

            with torch.inference_mode():
                output = pipe(
                    prompt=request.prompt, negative_prompt=request.negative_prompt,
                    width=request.width, height=request.height, num_inference_steps=steps,
                    num_images_per_prompt=1, output_type="pil", callback_on_step_end=on_step_end,
                    generator=torch.Generator("cpu").manual_seed(seed + index),
                )
            if cancel.is_set():  # set during the VAE decode: the job is cancelled all the same
                raise Cancelled()
            images.append(_png(output.images[0]))
        return images

    def close(self) -> None:
        """Drop the pipeline; a job still running keeps its own reference until it ends."""
        self._pipe = None
        gc.collect()


def _png(image: Any) -> bytes:
    """PNG bytes with no text chunks: a fresh image carries no ``info`` (so no prompt) to save."""
    from PIL import Image

    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG")
    return buffer.getvalue()
