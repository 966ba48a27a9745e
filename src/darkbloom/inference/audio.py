"""Audio decoding with PyAV, shared by the coordinator (which measures what it charges for) and the
provider (which decodes what it transcribes): one reading, so both agree on the duration.

Uploads are hostile bytes handed to FFmpeg, so the work is bounded and the surface narrowed:
- only the demuxers of the formats the API accepts may open the bytes (FFmpeg's
  ``format_whitelist``; no playlist or concat demuxer that could open other files), and only the
  usual audio decoders may decode them;
- only the first audio stream is read; duration is the decoded samples summed frame by frame
  (container metadata can lie), and decoding stops as soon as it passes the limit;
- sample rates and channel counts are bounded, and so are the damaged packets skipped;
- every failure, whatever FFmpeg or PyAV raise, becomes one InvalidRequest naming ``file``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Generator, Iterator
from contextlib import closing
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from darkbloom.errors import InvalidRequest
from darkbloom.inference.media_request import AUDIO_FORMATS, MAX_AUDIO_SECONDS

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

WHISPER_RATE = 16000  # what faster-whisper expects
# FFmpeg demuxer names for AUDIO_FORMATS: wav; mp3/mpga/mpeg; mp4/m4a (mov); flac; ogg/oga/opus;
# webm (matroska); ADTS AAC (what some .m4a files really are); MPEG program streams (.mpeg).
DEMUXERS = "wav,mp3,mov,flac,ogg,matroska,aac,mpeg"
# FFmpeg decoder names (prefixes) that may run on an upload.
DECODERS = ("pcm_", "adpcm_", "mp1", "mp2", "mp3", "aac", "alac", "flac", "vorbis", "libvorbis",
            "opus", "libopus")
MAX_SAMPLE_RATE = 192_000
# Below this no speech survives resampling to 16 kHz (a 1 Hz "recording" resamples to nothing):
# refused here, so the coordinator and the provider agree on what is audio.
MIN_SAMPLE_RATE = 1_000
MAX_CHANNELS = 32
MAX_BAD_PACKETS = 1000  # damaged packets skipped before the file counts as corrupt
_OPEN_OPTIONS = {"format_whitelist": DEMUXERS}


def _undecodable(detail: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"The file could not be decoded as audio{detail}. Supported formats: {list(AUDIO_FORMATS)}",
        param="file", code="invalid_file_format")


def _too_long(max_seconds: float) -> InvalidRequest:
    return InvalidRequest(f"The audio is longer than the maximum of {max_seconds:g} seconds",
                          param="file", code="audio_too_long")


def _empty() -> InvalidRequest:
    return InvalidRequest("The audio file is empty: it holds no audio samples", param="file",
                          code="empty_file")


class _Tally:
    """What the decoding generator measured, read by its consumer when it ends: samples per
    sample rate, exact (a float sum over a million frames drifts below a whole millisecond)."""

    def __init__(self) -> None:
        self.seconds = 0.0  # running, for the limit
        self.samples: dict[int, int] = {}

    def add(self, samples: int, rate: int) -> None:
        self.seconds += samples / rate
        self.samples[rate] = self.samples.get(rate, 0) + samples

    def exact(self) -> Fraction:
        return sum((Fraction(n, rate) for rate, n in self.samples.items()), Fraction(0))

    def over(self, max_seconds: float) -> bool:
        """Past the limit; the exact sum is only taken near it, where float drift could err."""
        return self.seconds > max_seconds - 0.001 and self.exact() > Fraction(max_seconds)

    @property
    def ms(self) -> int:
        return math.floor(self.exact() * 1000)


def _frames(data: bytes, max_seconds: float, tally: _Tally) -> Generator[AudioFrame, None, None]:
    """The decoded frames of the first audio stream, within the bounds the module names."""
    if not data:
        raise _empty()
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore",
                            options=_OPEN_OPTIONS)
    except (av.error.FFmpegError, ValueError, OSError, EOFError):
        raise _undecodable() from None
    with container:
        if not container.streams.audio:
            raise _undecodable(": it has no audio stream")
        stream = container.streams.audio[0]
        context = stream.codec_context  # None: FFmpeg has no decoder for the stream's codec
        decoder = (context.name if context is not None else None) or "unknown"
        if not decoder.startswith(DECODERS):
            raise _undecodable(f": its codec ({decoder[:32]}) is not supported")
        packets = container.demux(stream)
        bad = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, ValueError, OSError, EOFError):
                if tally.seconds:
                    break  # a damaged or truncated tail: keep the audio before it
                raise _undecodable() from None
            try:
                frames = packet.decode()
            except (av.error.FFmpegError, ValueError):
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise _undecodable(": too many damaged packets") from None
                continue
            for frame in frames:
                if not isinstance(frame, AudioFrame):
                    continue
                rate = frame.sample_rate
                if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE \
                        or not 0 < frame.layout.nb_channels <= MAX_CHANNELS:
                    raise _undecodable(": its sample rate or channel count is out of range")
                if frame.samples <= 0:
                    continue
                tally.add(frame.samples, rate)
                if tally.over(max_seconds):
                    raise _too_long(max_seconds)
                yield frame
    if not tally.seconds:
        raise _undecodable(": every packet was damaged") if bad else _empty()


def _guarded(fail: Exception) -> InvalidRequest:
    """Anything but InvalidRequest out of FFmpeg on hostile bytes is still the file's fault."""
    log.warning("audio decoding failed unexpectedly: %s", type(fail).__name__)
    return _undecodable()


def measure_audio(data: bytes, max_seconds: float = MAX_AUDIO_SECONDS) -> int:
    """The decoded duration in milliseconds, in bounded memory (no samples are kept)."""
    tally = _Tally()
    try:
        with closing(_frames(data, max_seconds, tally)) as frames:
            for _ in frames:
                pass
    except InvalidRequest:
        raise
    except Exception as exc:
        raise _guarded(exc) from None
    return tally.ms


def decode_audio(data: bytes, sample_rate: int = WHISPER_RATE,
                 max_seconds: float = MAX_AUDIO_SECONDS) -> NDArray[np.float32]:
    """Mono float32 samples at ``sample_rate``, as faster-whisper's own decode_audio gives them
    (s16 through FFmpeg's resampler, then scaled), so direct and served runs hear the same audio."""
    chunks: list[NDArray[np.int16]] = []
    try:
        with closing(_frames(data, max_seconds, _Tally())) as frames:
            resampler: AudioResampler | None = None
            shape: tuple[str, int, int] | None = None
            for frame in frames:
                # A stream may change rate or layout midway; a resampler serves one input shape.
                now = (frame.format.name, frame.layout.nb_channels, frame.sample_rate)
                if resampler is None or now != shape:
                    if resampler is not None:
                        chunks.extend(_flush(resampler))
                    resampler = AudioResampler(format="s16", layout="mono", rate=sample_rate)
                    shape = now
                frame.pts = None  # the container's timestamps may jump or repeat
                chunks.extend(_pcm(out) for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(_flush(resampler))
                # No gc.collect() here (faster-whisper's #390 workaround): with PyAV 18 300
                # decodes leave RSS flat, and a full collection in a provider with torch loaded
                # costs 0.2-0.3 s per request (docs/BENCHMARKS.md).
                del resampler
    except InvalidRequest:
        raise
    except Exception as exc:
        raise _guarded(exc) from None
    total = sum(len(chunk) for chunk in chunks)
    if not total:
        raise _empty()
    audio = np.empty(total, dtype=np.float32)
    at = 0
    for chunk in chunks:
        audio[at:at + len(chunk)] = chunk
        at += len(chunk)
    audio /= 32768.0
    return audio


def _flush(resampler: AudioResampler) -> Iterator[NDArray[np.int16]]:
    for out in resampler.resample(None):
        yield _pcm(out)


def _pcm(frame: AudioFrame) -> NDArray[np.int16]:
    """A packed mono s16 frame's samples (no copy)."""
    return np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
