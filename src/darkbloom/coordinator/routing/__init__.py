"""Which provider serves a request: the live registry and the slot scheduler."""
