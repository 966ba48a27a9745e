"""Prefix-cache affinity: which provider an account's next request should prefer, and the
opaque scope a provider keys its KV reuse on.

A provider reuses a conversation's KV prefix only for requests carrying the same scope (one
account's), so one consumer can never time-probe another's prompts through the cache
(docs/security.md). The scope is an HMAC of the account and the provider under a key of this
coordinator's own: a provider cannot tell which account it is, and two providers cannot match
their scopes to link an account across machines.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

_DOMAIN = b"darkbloom/prefix-cache-scope/v1\0"
MAX_REMEMBERED = 100_000  # (account, model) pairs: a few MB at most
MAX_AGE_S = 600.0


class CacheScopes:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)  # per process: a restart only costs cache misses

    def scope(self, account_id: str, provider_id: str) -> str:
        message = _DOMAIN + account_id.encode() + b"\0" + provider_id.encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]


class LastServed:
    """The provider that last answered an account for a model: routing prefers it among the
    near-cheapest, where that account's conversation prefix is likely still cached. Bounded
    (least recently used forgotten first) and forgotten after ``max_age`` seconds, by when a
    busy provider has given that KV stream to someone else and the preference only skews load."""

    def __init__(self, limit: int = MAX_REMEMBERED, max_age: float = MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit, self._max_age, self._clock = limit, max_age, clock
        self._last: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def get(self, account_id: str | None, model: str) -> str | None:
        if account_id is None or (entry := self._last.get((account_id, model))) is None:
            return None
        provider_id, at = entry
        return provider_id if self._clock() - at <= self._max_age else None

    def served(self, account_id: str | None, model: str, provider_id: str) -> None:
        if account_id is None:
            return
        key = (account_id, model)
        self._last[key] = (provider_id, self._clock())
        self._last.move_to_end(key)
        while len(self._last) > self._limit:
            self._last.popitem(last=False)
