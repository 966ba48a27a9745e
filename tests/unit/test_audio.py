"""inference/audio.py on real audio: espeak-ng speech re-encoded by PyAV into every accepted
container, the hostile cases (garbage, truncation, corruption, other demuxers and codecs), and the
test helpers' own word error rate."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from faster_whisper.audio import decode_audio as faster_whisper_decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkbloom.errors import InvalidRequest
from darkbloom.inference.audio import WHISPER_RATE, decode_audio, measure_audio
from tests.media.speech import FORMATS, encode, speak, word_error_rate

SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The sentence in every test format (an encoder missing from PyAV fails here, loudly)."""
    wav = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "fox.wav")
    return {fmt: encode(wav, fmt) for fmt in FORMATS}


def _wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def _silence_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def _encoded(container: str, codec: str, seconds: float = 1.0, rate: int = 48000) -> bytes:
    """A tone in ``container``/``codec``, for the formats the speech helper does not make."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate, layout="stereo")
        samples = int(seconds * rate)
        tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / rate) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).reshape(1, -1), format="s16",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="stereo",
                                      rate=rate)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            muxer.mux(stream.encode(chunk))
        muxer.mux(stream.encode(None))
    return out.getvalue()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_accepted_format_decodes_to_its_duration(speech: dict[str, bytes], fmt: str) -> None:
    seconds = _wav_seconds(speech["wav"])
    ms = measure_audio(speech[fmt])
    # AAC's priming frame adds about 45 ms of decoded audio; the others are sample-exact.
    assert abs(ms - seconds * 1000) <= (60 if fmt == "m4a" else 2)
    audio = decode_audio(speech[fmt])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / WHISPER_RATE - ms / 1000) < 0.01
    assert 0.1 < float(np.abs(audio).max()) <= 1.0  # speech, scaled into [-1, 1]


def test_decoding_matches_faster_whispers_own(speech: dict[str, bytes]) -> None:
    """Served and direct transcription hear the same samples (make bench compares them)."""
    for fmt in ("mp3", "ogg", "m4a"):
        ours = decode_audio(speech[fmt])
        theirs = faster_whisper_decode(io.BytesIO(speech[fmt]))
        assert np.array_equal(ours, theirs), fmt


def test_duration_is_exact_in_milliseconds() -> None:
    assert measure_audio(_silence_wav(2.5)) == 2500
    assert measure_audio(_silence_wav(1, rate=44100)) == 1000
    assert len(decode_audio(_silence_wav(2.5, rate=44100))) == 40000


def test_the_duration_comes_from_the_samples_not_the_header() -> None:
    """A WAV header claiming an hour over a second of samples measures one second."""
    data = bytearray(_silence_wav(1.0))
    data[40:44] = (3600 * 32000).to_bytes(4, "little")  # the data chunk's size field
    assert measure_audio(bytes(data)) == 1000


def test_empty_file_and_audio_without_samples() -> None:
    for data in (b"", _silence_wav(0)):
        with pytest.raises(InvalidRequest) as caught:
            measure_audio(data)
        assert (caught.value.code, caught.value.param) == ("empty_file", "file")
        with pytest.raises(InvalidRequest) as caught:
            decode_audio(data)
        assert caught.value.code == "empty_file"


@pytest.mark.parametrize("data", [
    b"x", b"not audio at all " * 100, bytes(range(256)) * 40, b"\x89PNG\r\n\x1a\n" + bytes(500),
    b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
    b"ffconcat version 1.0\nfile /etc/passwd\n",
])
def test_garbage_and_playlists_are_not_audio(data: bytes) -> None:
    for decode in (measure_audio, decode_audio):
        with pytest.raises(InvalidRequest) as caught:
            decode(data)
        assert caught.value.code == "invalid_file_format" and caught.value.param == "file"
        assert "could not be decoded as audio" in caught.value.message


def test_a_container_without_audio_is_refused() -> None:
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as muxer:
        stream = muxer.add_stream("ffv1", rate=1)
        stream.width = stream.height = 16
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        muxer.mux(stream.encode(frame.reformat(format=stream.codec_context.format)))
        muxer.mux(stream.encode(None))
    with pytest.raises(InvalidRequest, match="no audio stream") as caught:
        measure_audio(out.getvalue())
    assert caught.value.code == "invalid_file_format"


def test_demuxers_and_decoders_outside_the_accepted_formats_are_refused() -> None:
    """Sun AU is a fine audio container, but not one the API accepts: FFmpeg never opens it. AC-3
    in Matroska opens, and its decoder is not one that may run."""
    au = _encoded("au", "pcm_s16be")
    ac3 = _encoded("matroska", "ac3")
    assert av.open(io.BytesIO(au)).streams.audio  # both are real audio FFmpeg would decode
    assert av.open(io.BytesIO(ac3)).streams.audio
    for data in (au, ac3):
        with pytest.raises(InvalidRequest) as caught:
            measure_audio(data)
        assert caught.value.code == "invalid_file_format"
    with pytest.raises(InvalidRequest, match=r"codec \(ac3\)"):
        decode_audio(ac3)


def test_too_long_stops_at_the_limit() -> None:
    data = _silence_wav(3.0)
    assert measure_audio(data, max_seconds=3.0) == 3000
    for decode in (measure_audio, decode_audio):
        with pytest.raises(InvalidRequest) as caught:
            decode(data, max_seconds=2.0)
        assert (caught.value.code, caught.value.param) == ("audio_too_long", "file")


def test_a_truncated_file_keeps_the_audio_before_the_cut(speech: dict[str, bytes]) -> None:
    whole = measure_audio(speech["mp3"])
    half = measure_audio(speech["mp3"][: len(speech["mp3"]) // 2])
    assert 0 < half < whole


# The first bytes of each accepted container, so random bytes get past FFmpeg's probing.
MAGICS = (b"", b"RIFF\x00\x10\x00\x00WAVEfmt ", b"OggS\x00\x02", b"fLaC\x00\x00\x00\x22",
          b"ID3\x03\x00", b"\x1aE\xdf\xa3", b"\x00\x00\x00\x18ftypM4A ", b"\xff\xfb\x90\x00",
          b"\xff\xf1\x50\x80", b"\x00\x00\x01\xba")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MAGICS), st.binary(max_size=4096))
def test_random_bytes_raise_only_invalid_request(magic: bytes, data: bytes) -> None:
    _only_invalid_request(magic + data)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(list(FORMATS)), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=32),
       prefix=st.binary(max_size=16))
def test_damaged_real_files_raise_only_invalid_request(
        speech: dict[str, bytes], fmt: str, cut: float, flips: list[tuple[float, int]],
        prefix: bytes) -> None:
    """Valid files cut short, with bytes overwritten and junk in front: some still decode, the
    rest are the file's fault; no other exception type escapes."""
    data = bytearray(speech[fmt][: int(len(speech[fmt]) * cut)])
    for where, value in flips:
        if data:
            data[int(where * (len(data) - 1))] = value
    _only_invalid_request(prefix + bytes(data))


def _only_invalid_request(data: bytes) -> None:
    try:
        ms = measure_audio(data)
    except InvalidRequest as exc:
        assert exc.param == "file"
        assert exc.code in ("empty_file", "invalid_file_format", "audio_too_long")
    else:
        assert ms >= 0
    try:
        audio = decode_audio(data)
    except InvalidRequest as exc:
        assert exc.param == "file"
    else:
        assert audio.dtype == np.float32 and len(audio) > 0


def test_word_error_rate() -> None:
    assert word_error_rate(SENTENCE, "the quick brown fox jumps over the lazy dog") == 0
    assert word_error_rate(SENTENCE, "The quick brown fox jumped over the lazy dog!") == 1 / 9
    assert word_error_rate("a b c", "") == 1
    assert word_error_rate("a b c", "a x b c d") == 2 / 3  # two insertions
    assert word_error_rate("", "") == 0


def test_speak_writes_a_wav(tmp_path: Path) -> None:
    path = speak("hello", tmp_path / "hello.wav")
    assert _wav_seconds(path.read_bytes()) > 0.2
