"""TEST DOUBLE: a tiny Stable-Diffusion-shaped pipeline with random weights.

No text-to-image model ships in a wheel, so image tests build this one from configs (seeded, so
every build is the same), ``save_pretrained`` it to a directory, and load it through exactly the
path a real model takes (``DiffusersBackend.load``). Its images are noise-like: it is a test
double, never a model to advertise, serve outside tests, or benchmark as a model.

Shapes follow diffusers' own ``get_dummy_components`` for StableDiffusionPipeline, with a VAE of
four blocks so that, like a real SD VAE, one latent pixel is 8×8 image pixels, and a UNet whose
``sample_size`` 8 makes its native size 64×64. The CLIP tokenizer is a byte-level BPE written
here (the 256 byte symbols, a few merges): nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkbloom.provider.model_dirs import pipeline_files, weight_hash

TEST_DOUBLE_ID = "tiny-sd-test-double"  # the id tests serve it under: never a real model's name
_SEED = 1234
_MERGES = ("t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "a t", "e n", "o r")


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: every byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _write_tokenizer_files(directory: Path) -> Path:
    """vocab.json and merges.txt of a tiny CLIP BPE (ids < 600, within the text encoder's 1000)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens: list[str] = []
    for symbol in _byte_symbols():
        tokens += [symbol, symbol + "</w>"]
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n",
                                          encoding="utf-8")
    return directory


def build_tiny_pipeline(path: Path) -> Path:
    """Build the test double and ``save_pretrained`` it to ``path`` (a few seconds); returns path.

    The global torch RNG is left as it was: the weights come from a forked, seeded generator.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="tiny-clip-bpe-") as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(str(_write_tokenizer_files(Path(scratch))),
                                                  model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, layers_per_block=1, sample_size=64,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
            max_position_embeddings=77,
        ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(path), safe_serialization=True)
    return path


def catalog_entry(pipeline: Path, hashes: Path) -> dict[str, object]:
    """The double's entry for a test's own catalog file (DARKBLOOM_CATALOG_FILE): the only place
    it is ever registered."""
    files = pipeline_files(pipeline, pipeline)
    assert files is not None
    return {"id": TEST_DOUBLE_ID, "display_name": "Tiny SD (test double: random weights)",
            "context_length": 77, "size_bytes": sum(f.stat().st_size for f in files.values()),
            "sha256": weight_hash(pipeline, files, hashes / "hash.json"), "filename": TEST_DOUBLE_ID,
            "model_type": "image", "description": "A random-weight test double; noise, not art."}


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test double, built once per test session (import this fixture where it is needed)."""
    yield build_tiny_pipeline(tmp_path_factory.mktemp(TEST_DOUBLE_ID))
