"""Shared builders for unit tests: real objects, no sockets, no models, no database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from darkbloom.coordinator.routing.registry import ProviderConn
from darkbloom.crypto import KeyPair
from darkbloom.protocol.frames import Hardware

ProviderWithKey = Callable[..., tuple[ProviderConn, KeyPair]]
MakeProvider = Callable[..., ProviderConn]


def _provider_with_key(pid: str = "p1", models: tuple[str, ...] = ("m",),
                       max_concurrency: int = 1) -> tuple[ProviderConn, KeyPair]:
    keys = KeyPair.generate()
    conn = ProviderConn(
        id=pid,
        account_id=None,
        models=frozenset(models),
        public_key=keys.public,
        public_key_b64=keys.public_b64,
        max_concurrency=max_concurrency,
        hardware=Hardware(),
        backend="test",
        version="0",
    )
    return conn, keys


@pytest.fixture
def provider_with_key() -> ProviderWithKey:
    """Factory for a real ProviderConn whose X25519 private key the test holds."""
    return _provider_with_key


@pytest.fixture
def make_provider() -> MakeProvider:
    """Factory for a real ProviderConn when the test does not need its private key."""

    def make(pid: str = "p1", models: tuple[str, ...] = ("m",), max_concurrency: int = 1) -> ProviderConn:
        return _provider_with_key(pid, models, max_concurrency)[0]

    return make


@pytest.fixture(autouse=True, scope="session")
def _no_operator_provider_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """ProviderSettings reads <config_dir>/provider.toml and the saved token: unit tests use an
    empty config dir, not the provider config of whoever runs them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DARKBLOOM_PROVIDER_CONFIG_DIR", str(tmp_path_factory.mktemp("provider-config")))
        yield
