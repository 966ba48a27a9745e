"""Wire models shared by the coordinator and the provider. Models only: no I/O."""

from darkbloom.protocol import frames
from darkbloom.protocol.codec import MalformedFrame, UnknownFrame, decode, encode

__all__ = ["MalformedFrame", "UnknownFrame", "decode", "encode", "frames"]
