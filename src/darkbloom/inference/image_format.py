"""The image generation answer in OpenAI's shape (api.md §4): PNGs as base64 in JSON."""

from __future__ import annotations

import base64
import json
import time

from darkbloom.inference.media_request import ImageRequest


def render_images(pngs: list[bytes], request: ImageRequest) -> bytes:
    """``{"created", "data": [{"b64_json"}], "size", "output_format"}``: what OpenAI's SDK reads
    into ImagesResponse (the prompt is never echoed back)."""
    return json.dumps({
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(png).decode("ascii")} for png in pngs],
        "size": request.size,
        "output_format": "png",
    }, separators=(",", ":")).encode()
