"""Speech audio for tests: espeak-ng speaks a known text to WAV, PyAV re-encodes it into the
containers the API accepts, and word_error_rate scores what a model heard.

espeak-ng is Debian's (.ci/run installs it); a machine without it fails the test loudly rather than
skipping it, as a skipped transcription test proves nothing.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av

# Each test format: (container, codec, sample rate, channel layout, file extension). libopus only
# takes 48 kHz and friends; Vorbis is FFmpeg's native encoder (the bundled FFmpeg has no
# libvorbis), which is experimental and stereo only.
FORMATS: dict[str, tuple[str, str, int, str, str]] = {
    "wav": ("wav", "pcm_s16le", 22050, "mono", "wav"),
    "mp3": ("mp3", "libmp3lame", 22050, "mono", "mp3"),
    "m4a": ("mp4", "aac", 22050, "mono", "m4a"),
    "flac": ("flac", "flac", 22050, "mono", "flac"),
    "ogg": ("ogg", "vorbis", 22050, "stereo", "ogg"),  # Ogg Vorbis
    "opus": ("ogg", "libopus", 48000, "mono", "opus"),  # Ogg Opus
    "webm": ("webm", "libopus", 48000, "mono", "webm"),  # WebM Opus
}


def speak(text: str, path: Path, *, voice: str = "en-us", speed: int = 150) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``path`` (22.05 kHz mono s16)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: the transcription tests make their speech "
                           "with it (apt-get install -y espeak-ng; .ci/run installs it)")
    subprocess.run([exe, "-w", str(path), "-v", voice, "-s", str(speed), text], check=True,
                   capture_output=True, timeout=60)
    if not path.is_file() or path.stat().st_size <= 44:
        raise RuntimeError(f"espeak-ng wrote no audio to {path}")
    return path


def encode(wav_path: Path, fmt: str) -> bytes:
    """The WAV file re-encoded as ``fmt`` (a key of FORMATS), in memory. An encoder missing from
    PyAV's FFmpeg raises (av.codec.codec.UnknownCodecError), failing the test that asked."""
    container, codec, rate, layout, _ = FORMATS[fmt]
    out_buf = io.BytesIO()
    with av.open(str(wav_path)) as source, av.open(out_buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=rate)
        pts = 0
        for frame in source.decode(audio=0):
            frame.pts = None
            for chunk in resampler.resample(frame):
                chunk.pts, chunk.time_base = pts, Fraction(1, rate)
                pts += chunk.samples
                out.mux(stream.encode(chunk))
        for chunk in resampler.resample(None):
            chunk.pts, chunk.time_base = pts, Fraction(1, rate)
            pts += chunk.samples
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return out_buf.getvalue()


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length, case and punctuation ignored."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, heard in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != heard)))
        previous = current
    return previous[-1] / len(ref)
