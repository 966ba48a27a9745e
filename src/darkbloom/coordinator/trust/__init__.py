"""Provider trust: attestation verification and trust levels (trust.md)."""
