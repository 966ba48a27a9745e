"""create_app: wiring only. Everything long-lived is built in the lifespan and kept on app.state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from darkbloom import __version__, console
from darkbloom.config import CoordinatorSettings
from darkbloom.console.headers import SecurityHeadersMiddleware
from darkbloom.coordinator.api import errors
from darkbloom.coordinator.api.accounts import router as accounts_router
from darkbloom.coordinator.api.admin import router as admin_router
from darkbloom.coordinator.api.auth import KeyCache, watch_revoked_keys
from darkbloom.coordinator.api.billing import router as billing_router
from darkbloom.coordinator.api.cors import CorsMiddleware, origin_of
from darkbloom.coordinator.api.device import router as device_router
from darkbloom.coordinator.api.inference import router as inference_router
from darkbloom.coordinator.api.invites import router as invites_router
from darkbloom.coordinator.api.media import router as media_router
from darkbloom.coordinator.api.metrics import router as metrics_router
from darkbloom.coordinator.api.models import router as models_router
from darkbloom.coordinator.api.operators import router as operators_router
from darkbloom.coordinator.api.payments import router as payments_router
from darkbloom.coordinator.api.provider_ws import provider_watch
from darkbloom.coordinator.api.provider_ws import router as provider_router
from darkbloom.coordinator.api.providers import router as providers_router
from darkbloom.coordinator.api.referral import router as referral_router
from darkbloom.coordinator.api.request_id import RequestIdMiddleware
from darkbloom.coordinator.api.stats import router as stats_router
from darkbloom.coordinator.catalog_file import build_catalog
from darkbloom.coordinator.cluster.link import Link
from darkbloom.coordinator.cluster.node import Cluster, new_node_id
from darkbloom.coordinator.commit import Committer
from darkbloom.coordinator.dispatch import Dispatcher
from darkbloom.coordinator.metrics import Metrics, MetricsMiddleware
from darkbloom.coordinator.pipeline import Pipeline
from darkbloom.coordinator.prepare import Preparer, Tokenizers
from darkbloom.coordinator.pricing import PriceBook
from darkbloom.coordinator.recorder import Recorder, coordinator_id, hold_state_dir
from darkbloom.coordinator.routing.reputation import Reputations
from darkbloom.coordinator.routing.scheduler import Scheduler
from darkbloom.coordinator.sender_sealing import key_id, load_or_create_key
from darkbloom.coordinator.store.db import make_engine, make_sessionmaker, upgrade
from darkbloom.coordinator.store.reputation import ReputationStore
from darkbloom.coordinator.store.requests_log import mark_interrupted
from darkbloom.crypto.certificates import load_roots
from darkbloom.inference.catalog import Catalog

log = logging.getLogger(__name__)


def create_app(settings: CoordinatorSettings, catalog: Catalog | None = None) -> FastAPI:
    """Raises CatalogFileError when DARKBLOOM_CATALOG_FILE cannot be used."""
    catalog = catalog or build_catalog(settings.catalog_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade(settings.database_url)
        engine = make_engine(settings.database_url)
        sessions = make_sessionmaker(engine)
        reputation_store = ReputationStore(sessions)
        reputations = Reputations(reputation_store.load, reputation_store.save)
        scheduler = Scheduler(settings.queue_max_per_model, settings.queue_timeout_s,
                              settings.min_trust_level, settings.pass_window_s, reputations)
        dispatcher = Dispatcher(scheduler, max_response_bytes=settings.max_response_bytes,
                                max_buffered_bytes=settings.max_buffered_bytes,
                                deadline_s=settings.response_deadline_s)
        state_lock = hold_state_dir(settings.state_dir)  # held until this process ends
        instance = coordinator_id(settings.state_dir / "coordinator-id")
        if interrupted := await mark_interrupted(sessions, instance):
            log.warning("%d request(s) were still in progress when this coordinator last stopped; "
                        "marked interrupted", interrupted)
        recorder = Recorder(sessions, instance)
        state = app.state
        state.settings, state.catalog, state.engine, state.sessions = settings, catalog, engine, sessions
        state.scheduler, state.dispatcher, state.recorder = scheduler, dispatcher, recorder
        state.root_cas = load_roots(settings.trust_root_ca_files)
        state.link = None
        if settings.redis_url:  # several coordinators: docs/scale-out.md
            state.link = Link(Cluster.from_url(settings.redis_url, settings.redis_prefix,
                                               new_node_id(instance)), scheduler,
                              root_cas=state.root_cas,
                              carry_deadline_s=settings.response_deadline_s + 60,
                              accounts=reputation_store.account_of)
            state.link.on_frame = dispatcher.handle
            await state.link.start()
        state.key_cache = KeyCache(sessions)
        state.sender_keys = load_or_create_key(settings.state_dir / "coordinator-x25519.key")
        state.sender_kid = key_id(state.sender_keys)
        state.prices = PriceBook(catalog, sessions)
        await state.prices.load()
        state.pipeline = Pipeline(settings, Preparer(settings, catalog, Tokenizers(catalog)),
                                  Committer(settings, scheduler, dispatcher), state.prices, sessions,
                                  recorder, instance, state.key_cache.forget)
        state.pipeline.observers.append(state.metrics.observe_outcome)
        if orphans := await state.pipeline.refund_orphans():
            log.warning("refunded %d reservation(s) left open by a coordinator that stopped", orphans)
        log.info("coordinator ready (database: %s)", engine.dialect.name)
        watchers = [asyncio.create_task(watch_revoked_keys(state.key_cache, sessions,
                                                           settings.key_revocation_poll_s)),
                    asyncio.create_task(state.prices.watch(settings.price_reload_s)),
                    asyncio.create_task(state.pipeline.sweep_orphans(settings.orphan_sweep_s)),
                    asyncio.create_task(reputations.watch(settings.reputation_flush_s))]
        try:
            async with provider_watch(state):
                yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await state.pipeline.drain()
            if state.link is not None:
                await state.link.close()
            await reputations.close()
            await recorder.flush()
            await engine.dispose()
            state_lock.close()

    app = FastAPI(title="darkbloom coordinator", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    # Made here, not in the lifespan: the middleware and error handlers need it from the start.
    app.state.metrics = Metrics(app.state)
    errors.install(app)
    app.include_router(accounts_router)
    app.include_router(models_router)
    app.include_router(payments_router)
    app.include_router(inference_router)
    app.include_router(media_router)
    app.include_router(provider_router)
    app.include_router(providers_router)
    app.include_router(admin_router)
    app.include_router(invites_router)
    app.include_router(referral_router)
    app.include_router(billing_router)
    app.include_router(device_router)
    app.include_router(operators_router)
    app.include_router(stats_router)
    app.include_router(metrics_router)
    console.install(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # inside RequestIdMiddleware
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(CorsMiddleware, origin=origin_of(settings.cors_origin or settings.public_url))
    app.add_middleware(SecurityHeadersMiddleware)
    return app
