"""NaCl box sealing in the protocol.md §6 envelope shape."""

from __future__ import annotations

import base64

import pytest
from nacl.public import PrivateKey, PublicKey

from darkbloom.crypto import (
    Channel,
    KeyPair,
    SealingError,
    SessionChannel,
    b64decode,
    b64encode,
    public_key_from_b64,
)

NONCE = 24
MAC = 16


@pytest.fixture
def alice() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def bob() -> KeyPair:
    return KeyPair.generate()


def flip(ciphertext_b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(ciphertext_b64))
    raw[index] ^= 0x01
    return b64encode(bytes(raw))


def test_keypair_public_b64(alice: KeyPair) -> None:
    raw = base64.b64decode(alice.public_b64)
    assert len(raw) == 32
    assert raw == bytes(alice.private.public_key)
    assert isinstance(alice.public, PublicKey)


def test_keypairs_are_fresh() -> None:
    assert KeyPair.generate().public_b64 != KeyPair.generate().public_b64


@pytest.mark.parametrize("plaintext", [b"", b"data: {\"x\":1}", "héllo ✓".encode(), bytes(range(256)) * 40])
def test_round_trip(alice: KeyPair, bob: KeyPair, plaintext: bytes) -> None:
    envelope = Channel(alice, bob.public).seal(plaintext)
    assert set(envelope) == {"ephemeral_public_key", "ciphertext"}
    assert envelope["ephemeral_public_key"] == alice.public_b64
    assert len(base64.b64decode(envelope["ciphertext"])) == NONCE + MAC + len(plaintext)
    assert Channel(bob, alice.public).open(envelope["ciphertext"]) == plaintext


def test_sender_can_open_its_own_box(alice: KeyPair, bob: KeyPair) -> None:
    channel = Channel(alice, bob.public)
    assert channel.open(channel.seal(b"x")["ciphertext"]) == b"x"


def test_interoperates_with_a_key_built_from_b64(alice: KeyPair, bob: KeyPair) -> None:
    envelope = Channel(alice, public_key_from_b64(bob.public_b64)).seal(b"hello")
    sender = public_key_from_b64(envelope["ephemeral_public_key"])
    assert Channel(bob, sender).open(envelope["ciphertext"]) == b"hello"


def test_fresh_nonce_each_seal(alice: KeyPair, bob: KeyPair) -> None:
    channel = Channel(alice, bob.public)
    first = channel.seal(b"same plaintext")["ciphertext"]
    second = channel.seal(b"same plaintext")["ciphertext"]
    assert first != second
    assert base64.b64decode(first)[:NONCE] != base64.b64decode(second)[:NONCE]
    receiver = Channel(bob, alice.public)
    assert receiver.open(first) == receiver.open(second) == b"same plaintext"


@pytest.mark.parametrize("index", [0, NONCE - 1, NONCE, NONCE + MAC - 1, NONCE + MAC, -1])
def test_tampered_ciphertext_rejected(alice: KeyPair, bob: KeyPair, index: int) -> None:
    ciphertext = Channel(alice, bob.public).seal(b"attack at dawn")["ciphertext"]
    with pytest.raises(SealingError, match="authentication"):
        Channel(bob, alice.public).open(flip(ciphertext, index))


def test_truncated_ciphertext_rejected(alice: KeyPair, bob: KeyPair) -> None:
    raw = base64.b64decode(Channel(alice, bob.public).seal(b"attack at dawn")["ciphertext"])
    with pytest.raises(SealingError):
        Channel(bob, alice.public).open(b64encode(raw[:-1]))


def test_wrong_receiver_key_rejected(alice: KeyPair, bob: KeyPair) -> None:
    ciphertext = Channel(alice, bob.public).seal(b"secret")["ciphertext"]
    eve = KeyPair.generate()
    with pytest.raises(SealingError):
        Channel(eve, alice.public).open(ciphertext)


def test_wrong_sender_key_rejected(alice: KeyPair, bob: KeyPair) -> None:
    mallory = KeyPair.generate()
    ciphertext = Channel(mallory, bob.public).seal(b"forged")["ciphertext"]
    with pytest.raises(SealingError):
        Channel(bob, alice.public).open(ciphertext)  # bob expects alice


@pytest.mark.parametrize("text", ["not base64!!", "abc", "é", "YWJj\nZGVm", "YWJjZA="])
def test_bad_base64_rejected(alice: KeyPair, bob: KeyPair, text: str) -> None:
    with pytest.raises(SealingError, match="base64"):
        Channel(bob, alice.public).open(text)


@pytest.mark.parametrize("length", [0, 1, NONCE, NONCE + MAC - 1])
def test_short_ciphertext_rejected(alice: KeyPair, bob: KeyPair, length: int) -> None:
    with pytest.raises(SealingError, match="too short"):
        Channel(bob, alice.public).open(b64encode(b"\x00" * length))


def test_minimum_length_garbage_fails_authentication(alice: KeyPair, bob: KeyPair) -> None:
    with pytest.raises(SealingError, match="authentication"):
        Channel(bob, alice.public).open(b64encode(b"\x00" * (NONCE + MAC)))


def test_public_key_from_b64() -> None:
    key = PrivateKey.generate().public_key
    assert bytes(public_key_from_b64(b64encode(bytes(key)))) == bytes(key)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_public_key_from_b64_length_check(length: int) -> None:
    with pytest.raises(SealingError, match="32 bytes"):
        public_key_from_b64(b64encode(b"\x01" * length))


def test_public_key_from_b64_bad_base64() -> None:
    with pytest.raises(SealingError):
        public_key_from_b64("%%%")


def test_b64_helpers_round_trip() -> None:
    data = bytes(range(256))
    assert b64decode(b64encode(data)) == data
    assert b64encode(b"abc") == "YWJj"


# --- low-order keys (issue 8, item 12) and the bound session channel (item 10) ---------------

# Points of small order on Curve25519 (and their non-canonical encodings): each makes the
# shared secret a known constant, so none may ever be accepted as someone's key.
LOW_ORDER = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("hex_key", LOW_ORDER)
def test_low_order_public_keys_are_refused(hex_key: str) -> None:
    with pytest.raises(SealingError, match="low-order"):
        public_key_from_b64(b64encode(bytes.fromhex(hex_key)))


def test_channels_refuse_low_order_peers_too() -> None:
    from nacl.public import PublicKey

    zero = PublicKey(b"\x00" * 32)
    with pytest.raises(SealingError, match="low-order"):
        Channel(KeyPair.generate(), zero)
    with pytest.raises(SealingError, match="low-order"):
        SessionChannel(KeyPair.generate(), zero, "requester")


def _pair() -> tuple[SessionChannel, SessionChannel]:
    requester, provider = KeyPair.generate(), KeyPair.generate()
    return (SessionChannel(requester, provider.public, "requester"),
            SessionChannel(provider, requester.public, "provider"))


def test_session_round_trip_in_both_directions() -> None:
    requester, provider = _pair()
    assert provider.open("request", "", 0, requester.seal("request", "", 0, b"prompt")) == b"prompt"
    assert requester.open("response", "r", 7, provider.seal("response", "r", 7, b"chunk")) == b"chunk"
    assert requester.open("error", "r", 0, provider.seal("error", "r", 0, b"why")) == b"why"


@pytest.mark.parametrize(("direction", "rid", "seq"), [
    ("response", "r", 8), ("response", "other", 7), ("error", "r", 7),
])
def test_a_sealed_chunk_opens_only_at_its_own_place(direction: str, rid: str, seq: int) -> None:
    requester, provider = _pair()
    sealed = provider.seal("response", "r", 7, b"chunk")
    with pytest.raises(SealingError):
        requester.open(direction, rid, seq, sealed)  # type: ignore[arg-type]


def test_each_direction_has_its_own_key() -> None:
    """Reflection: the request sealed by the requester is not a valid response for anyone."""
    requester, provider = _pair()
    sealed = requester.seal("request", "", 0, b"prompt")
    with pytest.raises(SealingError):
        requester.open("response", "", 0, sealed)
    with pytest.raises(SealingError):
        provider.seal("request", "", 0, b"x")
    with pytest.raises(SealingError):
        provider.open("response", "", 0, provider.seal("response", "", 0, b"x"))
