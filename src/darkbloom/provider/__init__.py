"""The provider agent: engines, request serving and the coordinator connection."""
