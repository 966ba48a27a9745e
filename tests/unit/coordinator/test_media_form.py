"""The transcription form's parser refuses an oversized field as it arrives, naming it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from starlette.datastructures import Headers

from darkbloom.coordinator.api.media import MAX_FIELD_BYTES, _FormParser
from darkbloom.errors import InvalidRequest

CHUNK = 64 * 1024


def form_with(name: bytes, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n'
        for _ in range(size // CHUNK):
            sent.append(CHUNK)
            yield b"x" * CHUNK
        yield b"\r\n--B--\r\n"
    return chunks()


@pytest.mark.parametrize(("name", "param"), [(b"prompt", "prompt"), (b"file", "file")])
async def test_a_25_mib_field_is_refused_by_name_before_it_is_read(name: bytes, param: str) -> None:
    sent: list[int] = []
    parser = _FormParser(Headers({"content-type": "multipart/form-data; boundary=B"}),
                         form_with(name, 25 * 1024 * 1024, sent), max_part_size=MAX_FIELD_BYTES)
    with pytest.raises(InvalidRequest) as refused:
        await parser.parse()
    assert refused.value.param == param and refused.value.status_code == 400
    assert sum(sent) <= 2 * MAX_FIELD_BYTES  # refused as it grew, not once it was all held


async def test_a_field_of_64_kib_is_kept() -> None:
    parser = _FormParser(Headers({"content-type": "multipart/form-data; boundary=B"}),
                         form_with(b"prompt", MAX_FIELD_BYTES, []), max_part_size=MAX_FIELD_BYTES)
    form = await parser.parse()
    assert form["prompt"] == "x" * MAX_FIELD_BYTES
