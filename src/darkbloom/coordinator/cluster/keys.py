"""Redis key names of the cluster layer, all under one operator-chosen prefix.

Every key one coordinator touches is named here, so two deployments (or two test runs) that share
a Redis never see each other's keys when their prefixes differ. The layout assumes one Redis
primary (optionally with replicas or Sentinel): the Lua scripts touch several keys, which Redis
Cluster would need to be in one hash slot.
"""

from __future__ import annotations

import re

MAX_ID_CHARS = 128
MAX_MODEL_CHARS = 256
MAX_PREFIX_CHARS = 64
# Ids travel in key names and stream fields: printable, no spaces, bounded.
_ID = re.compile(rf"[!-~]{{1,{MAX_ID_CHARS}}}")
_MODEL = re.compile(rf"[!-~]{{1,{MAX_MODEL_CHARS}}}")
_PREFIX = re.compile(rf"[!-~]{{0,{MAX_PREFIX_CHARS}}}")


class BadName(ValueError):
    """An id, model or prefix that cannot be part of a key name."""


def check_id(kind: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise BadName(f"{kind} must be 1-{MAX_ID_CHARS} printable ASCII characters without spaces")
    return value


def check_model(value: str) -> str:
    if not _MODEL.fullmatch(value):
        raise BadName(f"model id must be 1-{MAX_MODEL_CHARS} printable ASCII characters without spaces")
    return value


class Keys:
    """Key names under ``prefix`` (a ':' is added when it lacks one)."""

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise BadName(f"redis prefix must be at most {MAX_PREFIX_CHARS} printable ASCII "
                          "characters without spaces")
        self.prefix = prefix if not prefix or prefix.endswith(":") else prefix + ":"

    # --- presence ----------------------------------------------------------------------
    def node(self, node_id: str) -> str:
        """A coordinator process's liveness key (a string with a TTL)."""
        return f"{self.prefix}node:{node_id}"

    @property
    def nodes(self) -> str:
        """Every node that beat recently: a sorted set scored by liveness expiry (ms)."""
        return f"{self.prefix}nodes"

    def provider(self, provider_id: str) -> str:
        """One provider session's presence record (JSON string with a TTL)."""
        return f"{self.prefix}prov:{provider_id}"

    def gone(self, provider_id: str) -> str:
        """A removed session's tombstone: a late write of its record is refused while it lasts."""
        return f"{self.prefix}gone:{provider_id}"

    def model(self, model: str) -> str:
        """Providers serving ``model``: a sorted set scored by presence expiry (ms)."""
        return f"{self.prefix}model:{model}"

    @property
    def providers(self) -> str:
        """Every provider with presence: a sorted set scored by presence expiry (ms)."""
        return f"{self.prefix}provs"

    # --- slots -------------------------------------------------------------------------
    def slots(self, provider_id: str) -> str:
        """Leases on one provider's slots: a sorted set of ``node/lease`` scored by expiry (ms)."""
        return f"{self.prefix}slots:{provider_id}"

    # --- bus ---------------------------------------------------------------------------
    def inbox(self, node_id: str) -> str:
        """Stream of requests, cancels and control messages for the providers ``node_id`` holds."""
        return f"{self.prefix}inbox:{node_id}"

    def replies(self, node_id: str) -> str:
        """Stream of provider frames coming back to the coordinator that sent the requests."""
        return f"{self.prefix}replies:{node_id}"

    @property
    def notices(self) -> str:
        """Pub/sub channel of wake-up hints: a slot freed, presence changed."""
        return f"{self.prefix}notices"

