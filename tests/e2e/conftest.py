"""One coordinator + one llama.cpp provider for the whole e2e session; tests that break things
build their own stacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import Coordinator, Provider


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    coordinator = Coordinator(tmp_path_factory.mktemp("stack")).start()
    provider = Provider(coordinator).start()
    try:
        yield coordinator
    finally:
        provider.stop()
        coordinator.stop()


@pytest.fixture(scope="session")
def client(stack: Coordinator) -> openai.OpenAI:
    return stack.client()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
