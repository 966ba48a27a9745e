"""Test media made at test time: speech from espeak-ng, re-encoded with PyAV (nothing downloaded)."""
