"""Several coordinators sharing one Redis (issue 10, docs/scale-out.md): provider presence,
slot leases, and the bus that carries sealed requests and frames between coordinators."""

from darkbloom.coordinator.cluster.bus import (
    Bus,
    BusError,
    ClusterUnavailable,
    InboxMessage,
    MessageTooLarge,
    NodeLost,
    Replies,
    RepliesLost,
)
from darkbloom.coordinator.cluster.keys import BadName, Keys
from darkbloom.coordinator.cluster.node import Cluster, new_node_id
from darkbloom.coordinator.cluster.notices import Notice, Notices, wake_delay
from darkbloom.coordinator.cluster.presence import Presence, ProviderRecord, RecordTooLarge
from darkbloom.coordinator.cluster.slots import Lease, Slots

__all__ = [
    "BadName",
    "Bus",
    "BusError",
    "Cluster",
    "ClusterUnavailable",
    "InboxMessage",
    "Keys",
    "Lease",
    "MessageTooLarge",
    "NodeLost",
    "Notice",
    "Notices",
    "Presence",
    "ProviderRecord",
    "RecordTooLarge",
    "Replies",
    "RepliesLost",
    "Slots",
    "new_node_id",
    "wake_delay",
]
