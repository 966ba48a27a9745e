"""Consumer-side helpers: check what a darkbloom coordinator and provider claim."""

from darkbloom.client.verify import Step, parse_sse, verify_receipt

__all__ = ["Step", "parse_sse", "verify_receipt"]
