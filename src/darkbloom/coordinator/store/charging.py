"""A request's money (billing.md §3, §4): reserve before any work, then exactly one ending, either
a refund of the whole reservation or a settlement that splits the cost between provider, platform
and referrer, refunds the rest and writes the usage and earnings rows, all in one transaction.

Every ending is conditional on the reservation still being ``open`` (read under the consumer's
row lock), so a settlement racing an orphan sweep or a second ending changes nothing twice.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from darkbloom.coordinator.money import media_cost, request_cost, split_cost
from darkbloom.coordinator.store.ledger import (
    PLATFORM_ACCOUNT_ID,
    Balances,
    InsufficientFunds,
    insert_rows,
    lock,
    move,
    transaction,
)
from darkbloom.coordinator.store.tables import (
    Account,
    ApiKey,
    Balance,
    ProviderEarning,
    Referral,
    Reservation,
    UsageRecord,
)

log = logging.getLogger(__name__)
OPEN, SETTLED, REFUNDED = "open", "settled", "refunded"


class BillingHold(Exception):
    """The account is on hold (a Stripe refund or dispute it could not cover): no new work."""


class KeyRevoked(Exception):
    """The request's API key was revoked (by any process): revocation takes effect at once,
    whatever a process's key cache still says, at no extra round trip."""


@dataclass(frozen=True, slots=True)
class Hold:
    """What one request reserved, and at which prices (a price change applies to later requests)."""

    request_id: str
    account_id: str
    amount_micro_usd: int
    input_price: int
    output_price: int
    prompt_estimate: int
    max_tokens: int
    api_key_id: str | None = None  # the key it was made with (None: a session), checked unrevoked
    # Media (media.md): ``input_price`` is per this many units (audio ms per minute, 1 per image)
    # and ``prompt_estimate`` the units reserved; 0 for text, priced by tokens.
    units_per_price: int = 0

    def cost(self, served: Served) -> int:
        if self.units_per_price:
            return media_cost(served.media_units, self.input_price, self.units_per_price)
        return request_cost(served.prompt_tokens, served.completion_tokens, self.input_price,
                            self.output_price)


@dataclass(frozen=True, slots=True)
class Served:
    """What settlement needs to know about the request as served."""

    prompt_tokens: int
    completion_tokens: int
    status: str  # completed | partial
    endpoint: str
    model: str
    api_key_id: str | None
    provider_id: str | None
    provider_account_id: str | None
    provider_key: str | None
    plausible: bool  # the counts are within what the coordinator could check (excess may be charged)
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    media_units: int = 0  # audio milliseconds or images, for a media request


@dataclass(frozen=True, slots=True)
class Settled:
    cost_micro_usd: int
    refund_micro_usd: int
    payout_micro_usd: int
    platform_fee_micro_usd: int
    referral_reward_micro_usd: int
    self_routed: bool


_AUTOCOMMIT: weakref.WeakKeyDictionary[Any, AsyncEngine] = weakref.WeakKeyDictionary()


def _autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The engine's autocommit view (same pool), made once per engine, not per reservation."""
    view = _AUTOCOMMIT.get(engine.sync_engine)
    if view is None:
        view = _AUTOCOMMIT[engine.sync_engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return view


async def balance_of(sessions: async_sessionmaker[AsyncSession], account_id: str) -> int:
    """The account's balance as it stands (a read, no lock): for a check before costly work."""
    async with sessions() as session:
        value = (await session.execute(select(Balance.balance_micro_usd).where(
            Balance.account_id == account_id))).scalar_one_or_none()
    return int(value or 0)


async def reserve(sessions: async_sessionmaker[AsyncSession], hold: Hold,
                  coordinator_id: str | None = None) -> None:
    """Debit the hold (``reserve`` row) and open the reservation, or raise InsufficientFunds or
    BillingHold with nothing written. A zero hold (self-route, a free model) opens a reservation
    with no ledger row, so every request still ends through ``settle`` or ``refund``."""
    engine = sessions.kw.get("bind")
    if hold.amount_micro_usd > 0 and isinstance(engine, AsyncEngine) and engine.dialect.name == "postgresql":
        # One statement is its own transaction: no BEGIN or COMMIT round trip, no ORM session.
        async with _autocommit(engine).connect() as connection:
            if await _reserve_in_one_statement(connection, hold, coordinator_id):
                return
    async with transaction(sessions) as session:
        balance, on_hold, revoked = await _lock_consumer(session, hold.account_id, hold.api_key_id)
        if revoked:
            raise KeyRevoked(hold.api_key_id)
        if on_hold:
            raise BillingHold(hold.account_id)
        rows: list[Any] = []
        if hold.amount_micro_usd > 0:
            rows.append(await move(session, hold.account_id, -hold.amount_micro_usd, "reserve",
                                   hold.request_id, before=balance, request_id=hold.request_id))
        rows.append(Reservation(
            request_id=hold.request_id, account_id=hold.account_id, amount_micro_usd=hold.amount_micro_usd,
            input_price=hold.input_price, output_price=hold.output_price,
            prompt_estimate=hold.prompt_estimate, max_tokens=hold.max_tokens, state=OPEN,
            coordinator_id=coordinator_id, created_at=datetime.now(UTC), settled_at=None))
        await insert_rows(session, rows)


# The whole reservation as one PostgreSQL statement (it is in every request's time to first token;
# each statement through SQLAlchemy's async session costs ~0.3 ms here, docs/BENCHMARKS.md). The
# same steps as the general path: lock the balance row (FOR UPDATE returns its latest version),
# then, only if the key is live, the account not on hold and the balance enough, the min-rule
# debit, its ledger row (withdrawable delta from the locked row) and the open reservation.
_RESERVE = text("""
WITH cur AS (
    SELECT b.withdrawable_micro_usd AS w, a.billing_hold AS on_hold,
           (CAST(:key_id AS VARCHAR) IS NULL OR EXISTS (
               SELECT 1 FROM api_keys k WHERE k.id = CAST(:key_id AS VARCHAR)
               AND k.account_id = CAST(:account AS VARCHAR) AND k.revoked_at IS NULL)) AS live
    FROM balances b JOIN accounts a ON a.id = b.account_id
    WHERE b.account_id = CAST(:account AS VARCHAR)
    FOR UPDATE OF b
), debit AS (
    UPDATE balances b
    SET balance_micro_usd = b.balance_micro_usd - CAST(:amount AS BIGINT),
        withdrawable_micro_usd = LEAST(b.withdrawable_micro_usd,
                                       b.balance_micro_usd - CAST(:amount AS BIGINT)),
        updated_at = CAST(:now AS TIMESTAMPTZ)
    FROM cur
    WHERE b.account_id = CAST(:account AS VARCHAR) AND cur.live AND NOT cur.on_hold
      AND b.balance_micro_usd >= CAST(:amount AS BIGINT)
    RETURNING b.balance_micro_usd AS balance, b.withdrawable_micro_usd AS w, cur.w AS w_before
), entry AS (
    INSERT INTO ledger_entries (account_id, kind, amount_micro_usd, withdrawable_delta_micro_usd,
                                balance_after_micro_usd, reference, request_id, actor, created_at)
    SELECT CAST(:account AS VARCHAR), 'reserve', -CAST(:amount AS BIGINT), debit.w - debit.w_before,
           debit.balance, CAST(:request_id AS VARCHAR), CAST(:request_id AS VARCHAR), 'system',
           CAST(:now AS TIMESTAMPTZ)
    FROM debit
), opened AS (
    INSERT INTO reservations (request_id, account_id, amount_micro_usd, input_price, output_price,
                              prompt_estimate, max_tokens, state, coordinator_id, created_at)
    SELECT CAST(:request_id AS VARCHAR), CAST(:account AS VARCHAR), CAST(:amount AS BIGINT),
           CAST(:input_price AS BIGINT), CAST(:output_price AS BIGINT), CAST(:prompt AS INTEGER),
           CAST(:max_tokens AS INTEGER), 'open', CAST(:coordinator AS VARCHAR), CAST(:now AS TIMESTAMPTZ)
    FROM debit
)
SELECT cur.live, cur.on_hold, (SELECT count(*) FROM debit) AS debited FROM cur
""")


async def _reserve_in_one_statement(connection: AsyncConnection, hold: Hold,
                                    coordinator_id: str | None) -> bool:
    """The reservation in one round trip; False (nothing written) when the account has no balance
    row yet, for the general path to make one."""
    row = (await connection.execute(_RESERVE, {
        "key_id": hold.api_key_id, "account": hold.account_id, "amount": hold.amount_micro_usd,
        "now": datetime.now(UTC), "request_id": hold.request_id, "input_price": hold.input_price,
        "output_price": hold.output_price, "prompt": hold.prompt_estimate, "max_tokens": hold.max_tokens,
        "coordinator": coordinator_id})).one_or_none()
    if row is None:
        return False
    if not row.live:
        raise KeyRevoked(hold.api_key_id)
    if row.on_hold:
        raise BillingHold(hold.account_id)
    if not row.debited:
        raise InsufficientFunds(f"account {hold.account_id} cannot cover {hold.amount_micro_usd} micro-USD")
    return True


async def _lock_consumer(session: AsyncSession, account_id: str,
                         key_id: str | None) -> tuple[Balances, bool, bool]:
    """The consumer's locked balance, billing hold, and whether ``key_id`` is no longer a live key
    of the account: one round trip where the balance row exists on PostgreSQL (the reservation is
    in every request's time to first token)."""
    key = select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.account_id == account_id,
                                  ApiKey.revoked_at.is_(None)).scalar_subquery()
    live = key.is_not(None) if key_id is not None else literal(True)
    if session.get_bind().dialect.name != "sqlite":
        row = (await session.execute(
            select(Balance.balance_micro_usd, Balance.withdrawable_micro_usd, Account.billing_hold, live)
            .join(Account, Account.id == Balance.account_id).where(Balance.account_id == account_id)
            .with_for_update(of=Balance))).one_or_none()
        if row is not None:
            return Balances(row[0], row[1]), bool(row[2]), not row[3]
    balance = (await lock(session, account_id))[account_id]
    flags = (await session.execute(select(Account.billing_hold, live).where(Account.id == account_id))).one()
    return balance, bool(flags[0]), not flags[1]


async def _end(session: AsyncSession, request_id: str, state: str) -> int | None:
    """Close the reservation if it is still open; its amount, or None if it had already ended.
    The first statement of every ending (a write: on SQLite it opens the transaction), and the
    reservation row's lock orders concurrent endings of one request."""
    return (await session.execute(
        update(Reservation).where(Reservation.request_id == request_id, Reservation.state == OPEN)
        .values(state=state, settled_at=datetime.now(UTC))
        .returning(Reservation.amount_micro_usd))).scalar_one_or_none()


async def refund(sessions: async_sessionmaker[AsyncSession], request_id: str, account_id: str,
                 reference: str | None = None) -> int:
    """Give an open reservation back in full (failure before any answer, the provider failing,
    an orphan); returns the amount, 0 if it had already ended."""
    async with transaction(sessions) as session:
        amount = await _end(session, request_id, REFUNDED)
        if not amount:
            return 0
        locked = await lock(session, account_id)
        await insert_rows(session, [await move(session, account_id, amount, "refund",
                                               reference or request_id, before=locked[account_id],
                                               request_id=request_id)])
        return amount


async def settle(sessions: async_sessionmaker[AsyncSession], hold: Hold, served: Served, *,
                 fee_bps: int, referral_pct: int) -> Settled | None:
    """Charge what was served at the reserved prices; None if the reservation had already ended.

    Self-served (the consumer's own provider) is free. A cost above the hold is debited only when
    the counts were plausible and the balance covers it; otherwise it is clamped to the hold.
    """
    account_id, request_id = hold.account_id, hold.request_id
    provider = served.provider_account_id
    self_routed = provider is not None and provider == account_id
    async with transaction(sessions) as session:
        reserved = await _end(session, request_id, SETTLED)
        if reserved is None:
            return None
        referrer = (await session.execute(select(Referral.referrer_account_id).where(
            Referral.account_id == account_id))).scalar_one_or_none()
        rewarded = referrer is not None and referrer not in (account_id, provider)
        cost = 0 if self_routed or provider is None else hold.cost(served)
        parts = split_cost(cost, fee_bps, referral_pct, rewarded)
        involved = [account_id] + [a for a in (provider, referrer if rewarded else None) if a]
        if parts.platform_fee:
            involved.append(PLATFORM_ACCOUNT_ID)
        locked = await lock(session, *involved)
        rows: list[Any] = []
        if cost > reserved:
            cost = await _charge_excess(session, rows, hold, locked, cost, served.plausible)
            parts = split_cost(cost, fee_bps, referral_pct, rewarded)
        if reserved - cost > 0:
            await _move(session, rows, locked, account_id, reserved - cost, "refund", request_id)
        if parts.payout and provider is not None:
            await _move(session, rows, locked, provider, parts.payout, "payout", request_id)
            rows.append(ProviderEarning(
                account_id=provider, provider_id=served.provider_id or "", provider_key=served.provider_key,
                job_id=request_id, model=served.model, amount_micro_usd=parts.payout,
                prompt_tokens=served.prompt_tokens, completion_tokens=served.completion_tokens,
                created_at=datetime.now(UTC)))
        if parts.platform_fee:
            await _move(session, rows, locked, PLATFORM_ACCOUNT_ID, parts.platform_fee, "platform_fee",
                        request_id, withdrawable=False)
        if parts.referral_reward and referrer is not None:
            await _move(session, rows, locked, referrer, parts.referral_reward, "referral_reward",
                        request_id)
        rows.append(UsageRecord(
            request_id=request_id, account_id=account_id, api_key_id=served.api_key_id,
            endpoint=served.endpoint, model=served.model, provider_id=served.provider_id,
            provider_account_id=provider, prompt_tokens=served.prompt_tokens,
            completion_tokens=served.completion_tokens, cost_micro_usd=cost,
            provider_payout_micro_usd=parts.payout, platform_fee_micro_usd=parts.platform_fee,
            referral_reward_micro_usd=parts.referral_reward, status=served.status,
            self_routed=self_routed, ttft_ms=served.ttft_ms, duration_ms=served.duration_ms,
            created_at=datetime.now(UTC)))
        await insert_rows(session, rows)
    return Settled(cost, max(reserved - cost, 0), parts.payout, parts.platform_fee,
                   parts.referral_reward, self_routed)


async def _move(session: AsyncSession, rows: list[Any], locked: dict[str, Balances], account_id: str,
                amount: int, kind: str, request_id: str, withdrawable: bool | None = None,
                reference: str | None = None) -> None:
    """A settlement's movement, its row added to ``rows`` and ``locked`` kept current: one account
    may take two movements (a provider linked to the platform account earns its payout and the
    fee), and each row's withdrawable delta is measured from the balance the one before it left."""
    before = locked[account_id]
    entry = await move(session, account_id, amount, kind, reference or request_id, before=before,
                       withdrawable=withdrawable, request_id=request_id)
    rows.append(entry)
    locked[account_id] = Balances(entry.balance_after_micro_usd,
                                  before.withdrawable_micro_usd + entry.withdrawable_delta_micro_usd)


async def _charge_excess(session: AsyncSession, rows: list[Any], hold: Hold, locked: dict[str, Balances],
                         cost: int, plausible: bool) -> int:
    """billing.md §4 step 1: the cost above the hold, debited if plausible and affordable; else the
    hold is the cost (and the shortfall is logged)."""
    excess = cost - hold.amount_micro_usd
    if plausible:
        try:
            await _move(session, rows, locked, hold.account_id, -excess, "reserve", hold.request_id,
                        reference=f"excess:{hold.request_id}")
            return cost
        except InsufficientFunds:
            pass
    log.warning("request %s cost %d micro-USD above its reservation of %d; clamped",
                hold.request_id, excess, hold.amount_micro_usd)
    return hold.amount_micro_usd


async def refund_orphans(sessions: async_sessionmaker[AsyncSession], coordinator_id: str | None,
                         older_than: datetime, limit: int = 10_000) -> int:
    """billing.md §4: reservations a dead coordinator left open are refunded in full under
    ``orphan:<request id>``: at start, all of this coordinator's own (its previous run died holding
    them), and any other's opened before ``older_than`` (no request can still be running then).
    Returns how many were refunded."""
    mine = Reservation.coordinator_id == coordinator_id if coordinator_id else Reservation.request_id == ""
    async with sessions() as session:
        rows = (await session.execute(select(Reservation.request_id, Reservation.account_id).where(
            Reservation.state == OPEN, mine | (Reservation.created_at < older_than))
            .order_by(Reservation.created_at).limit(limit))).all()
    refunded = 0
    for request_id, account_id in rows:
        if await refund(sessions, request_id, account_id, reference=f"orphan:{request_id}"):
            refunded += 1
    return refunded
