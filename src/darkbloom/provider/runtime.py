"""`darkbloom serve`: load the model first, then connect; stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal

from darkbloom.config import ProviderSettings
from darkbloom.inference.catalog import Catalog, file_sha256
from darkbloom.provider.agent import ProviderAgent
from darkbloom.provider.engines.base import Engine
from darkbloom.provider.engines.llamacpp import LlamaCppEngine, load_default

log = logging.getLogger(__name__)


def disable_core_dumps() -> None:
    """A core dump would hold decrypted prompts; none are written (trust.md hygiene)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def load_engine(settings: ProviderSettings, catalog: Catalog) -> LlamaCppEngine:
    if len(settings.models) != 1:
        raise ValueError("this release serves exactly one model per provider process")
    model = catalog.resolve(settings.models[0])
    if model is None:
        raise ValueError(f"model {settings.models[0]!r} is not in the catalog")
    path = model.weights_path()
    if path is None:
        raise FileNotFoundError(f"weights for {model.id} are not installed")
    weight_hash = file_sha256(path)
    return load_default(model, slots=settings.slots, threads=settings.threads,
                        weight_hash=weight_hash)


async def serve(settings: ProviderSettings, engine: Engine) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    agent = ProviderAgent(settings, engine)
    try:
        await agent.run(stop)
    finally:
        engine.close()
