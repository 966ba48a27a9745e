"""One price per model (billing.md §1 Decision): an admin's price over the catalog's, read from the
database at start and every few seconds (another coordinator process may have changed it), so a
reservation never waits on the database for its price."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import ModelPrice
from darkbloom.inference.catalog import Catalog, CatalogModel

log = logging.getLogger(__name__)
MAX_PRICE = 10**12  # micro-USD per million tokens ($1M): keeps every cost product inside 64 bits


@dataclass(frozen=True, slots=True)
class Price:
    input_price: int  # micro-USD per 1M prompt tokens
    output_price: int  # micro-USD per 1M completion tokens


class PriceBook:
    def __init__(self, catalog: Catalog, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._catalog = catalog
        self._sessions = sessions
        self._overrides: dict[str, Price] = {}

    def price(self, model: CatalogModel) -> Price:
        return self._overrides.get(model.id) or Price(model.input_price, model.output_price)

    def all(self) -> list[tuple[CatalogModel, Price]]:
        return [(model, self.price(model)) for model in self._catalog.models]

    async def load(self) -> None:
        async with self._sessions() as session:
            rows = (await session.execute(select(ModelPrice))).scalars().all()
        self._overrides = {row.model: Price(row.input_price, row.output_price) for row in rows}

    async def store(self, session: AsyncSession, model: CatalogModel, price: Price, actor: str) -> None:
        """Write an admin's price in the caller's transaction (``remember`` it once committed)."""
        await session.merge(ModelPrice(model=model.id, input_price=price.input_price,
                                       output_price=price.output_price, updated_at=datetime.now(UTC),
                                       updated_by=actor))

    def remember(self, model: CatalogModel, price: Price) -> None:
        self._overrides[model.id] = price

    async def watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.load()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("could not reload model prices (%s)", type(exc).__name__)
