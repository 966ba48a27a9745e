"""A media answer checked before it is relayed and charged (media.md): the provider makes the body,
so the coordinator makes sure it is what the consumer's SDK will parse, counts the images it
holds (a provider's report is charged only as far as the body bears it out) and drops a receipt
that charges for other units than the ones billed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

from darkbloom.coordinator.commit import Finished
from darkbloom.coordinator.dispatch import INVALID_RESPONSE, Attempt, Dispatcher
from darkbloom.coordinator.prepare import MediaJob
from darkbloom.errors import ProviderFailed
from darkbloom.protocol.frames import Usage

log = logging.getLogger(__name__)

_PNG_B64 = "iVBORw0KGgo"  # base64 of the PNG signature's first 8 bytes
_INLINE_BYTES = 64 * 1024  # larger bodies are checked off the event loop


def problem(job: MediaJob, body: bytes) -> tuple[str | None, int | None]:
    """Why the body is not an answer of its kind (or None), and the images it holds."""
    if job.answer in ("text", "srt", "vtt"):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return "a text answer that is not UTF-8", None
        return None, None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return "an answer that is not JSON", None
    if not isinstance(value, dict):
        return "an answer that is not a JSON object", None
    if job.answer != "images":
        return (None if isinstance(value.get("text"), str) else "a transcription with no text"), None
    data = value.get("data")
    if not isinstance(data, list) or not all(
            isinstance(item, dict) and isinstance(item.get("b64_json"), str)
            and item["b64_json"].startswith(_PNG_B64) for item in data):
        return "an image answer without a list of base64 PNGs in data", None
    return None, len(data)


async def checked(dispatcher: Dispatcher, attempt: Attempt, job: MediaJob, body: bytes,
                  finished: Finished) -> Finished:
    """``finished`` as it may be charged, or ProviderFailed (refunded) for a body not of its kind.
    Images are billed at most as many as the body holds; a receipt that does not sign the units
    billed is dropped (the consumer would hold a receipt for another charge)."""
    if len(body) > _INLINE_BYTES:
        wrong, images = await asyncio.to_thread(problem, job, body)
    else:
        wrong, images = problem(job, body)
    if wrong is not None:
        dispatcher.rejected(attempt, wrong)
        raise ProviderFailed(INVALID_RESPONSE)
    billed = getattr(finished.usage, job.unit) or 0
    if images is not None and images < billed:
        log.warning("provider %s reported %d images on %s; the answer holds %d, billed at that",
                    attempt.provider.id, billed, attempt.request_id, images)
        billed = images
        finished = replace(finished, disputed=True, usage=Usage(
            prompt_tokens=0, completion_tokens=0, images=images))
    receipt = finished.receipt
    if receipt is not None and getattr(receipt.receipt, job.unit) != billed:
        log.warning("provider %s signed a receipt for other %s than billed on %s; dropped",
                    attempt.provider.id, job.unit, attempt.request_id)
        finished = replace(finished, receipt=None)
    return finished
