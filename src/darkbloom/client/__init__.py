"""Consumer-side helpers: check what a darkbloom coordinator and provider claim."""

from darkbloom.client.sealing import open_body, open_events, seal_request
from darkbloom.client.verify import Step, parse_sse, verify_receipt

__all__ = ["Step", "open_body", "open_events", "parse_sse", "seal_request", "verify_receipt"]
