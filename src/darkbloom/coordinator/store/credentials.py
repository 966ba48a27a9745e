"""Accounts, API keys and provider tokens. Raw secrets are returned once and never stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import Account, ApiKey, ProviderToken

API_KEY_PREFIX = "sk-db-"
PROVIDER_TOKEN_PREFIX = "darkbloom-pt-"
LOCAL_ACCOUNT_ID = "local"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def revoked_key_hashes(sessions: async_sessionmaker[AsyncSession], since: datetime) -> list[str]:
    """Hashes of the API keys revoked after ``since`` (by any process: HTTP or the CLI)."""
    async with sessions() as session:
        rows = await session.execute(select(ApiKey.key_hash).where(ApiKey.revoked_at > since))
    return [row[0] for row in rows]


def _new_id() -> str:
    return secrets.token_hex(12)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    key_id: str | None  # None: a signed-in session, accepted wherever a key is (api.md §1)
    account_id: str
    min_trust_level: str | None = None


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    token_id: str
    account_id: str


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    id: str
    secret: str
    prefix: str
    account_id: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyListing:
    id: str
    prefix: str
    label: str
    created_at: datetime
    last_used_at: datetime | None


def aware(stamp: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stamp here is UTC."""
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


async def ensure_account(session: AsyncSession, account_id: str, name: str = "") -> None:
    if await session.get(Account, account_id) is None:
        session.add(Account(id=account_id, name=name, created_at=now()))
        await session.flush()


async def create_api_key(
    sessions: async_sessionmaker[AsyncSession], account_id: str = LOCAL_ACCOUNT_ID, label: str = "",
    min_trust_level: str | None = None,
) -> IssuedSecret:
    # api.md §1: sk-db- + 64 hex. Keys minted before (sk-db- + urlsafe base64) still look up.
    secret = API_KEY_PREFIX + secrets.token_hex(32)
    async with sessions.begin() as session:
        await ensure_account(session, account_id)
        row = ApiKey(id=_new_id(), account_id=account_id, prefix=secret[:12],
                     key_hash=hash_secret(secret), label=label, created_at=now(),
                     min_trust_level=min_trust_level)
        session.add(row)
    return IssuedSecret(row.id, secret, row.prefix, account_id, row.created_at)


async def create_provider_token(
    sessions: async_sessionmaker[AsyncSession], account_id: str = LOCAL_ACCOUNT_ID, label: str = ""
) -> IssuedSecret:
    async with sessions.begin() as session:
        return await mint_provider_token(session, account_id, label, now())


async def mint_provider_token(session: AsyncSession, account_id: str, label: str,
                              created_at: datetime) -> IssuedSecret:
    """A new provider token for ``account_id``, inside the caller's transaction (a device-code
    login mints it in the transaction that consumes the code)."""
    secret = PROVIDER_TOKEN_PREFIX + secrets.token_hex(32)
    await ensure_account(session, account_id)
    row = ProviderToken(id=_new_id(), account_id=account_id, prefix=secret[:20],
                        token_hash=hash_secret(secret), label=label, created_at=created_at)
    session.add(row)
    await session.flush()
    return IssuedSecret(row.id, secret, row.prefix, account_id, created_at)


@dataclass(frozen=True, slots=True)
class TokenListing:
    id: str
    prefix: str
    label: str
    created_at: datetime
    last_used_at: datetime | None


# A page of an account's listing holds at most this many tokens: a device login mints one each,
# so an account may hold many; the rest are reached with the ``before`` cursor.
MAX_LISTED_TOKENS = 1000
# A registering provider marks its token used at most this often (one write per hour per token).
TOKEN_TOUCH_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class TokenPage:
    tokens: list[TokenListing]
    truncated: bool  # more tokens follow: pass the last one's id as ``before``


async def list_account_provider_tokens(sessions: async_sessionmaker[AsyncSession], account_id: str,
                                       limit: int = MAX_LISTED_TOKENS, before: str | None = None
                                       ) -> TokenPage | None:
    """A page of an account's unrevoked provider tokens, newest first (prefixes only, never
    secrets), after the token ``before`` (the last one of the previous page) if given. None:
    ``before`` is not one of this account's tokens (revoked ones still count as a place)."""
    limit = max(1, min(limit, MAX_LISTED_TOKENS))
    async with sessions() as session:
        where = [ProviderToken.account_id == account_id, ProviderToken.revoked_at.is_(None)]
        if before is not None:
            mark = (await session.execute(select(ProviderToken.created_at).where(
                ProviderToken.id == before, ProviderToken.account_id == account_id))).scalar()
            if mark is None:
                return None
            # The order is (created_at descending, id ascending): what comes after ``before``.
            where.append(or_(ProviderToken.created_at < mark,
                             (ProviderToken.created_at == mark) & (ProviderToken.id > before)))
        rows = (await session.execute(select(ProviderToken).where(*where)
                                      .order_by(ProviderToken.created_at.desc(), ProviderToken.id)
                                      .limit(limit + 1))).scalars().all()
    return TokenPage([TokenListing(r.id, r.prefix, r.label, aware(r.created_at),
                                   aware(r.last_used_at) if r.last_used_at else None)
                      for r in rows[:limit]], truncated=len(rows) > limit)


async def revoke_own_provider_token(sessions: async_sessionmaker[AsyncSession], account_id: str,
                                    token_id: str) -> bool:
    """Revoke ``token_id`` if it is ``account_id``'s and not revoked yet (someone else's token
    reads as not found: its existence is not the caller's business)."""
    async with sessions.begin() as session:
        result = await session.execute(update(ProviderToken).where(
            ProviderToken.id == token_id, ProviderToken.account_id == account_id,
            ProviderToken.revoked_at.is_(None)).values(revoked_at=now()))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def touch_provider_token(sessions: async_sessionmaker[AsyncSession], token_id: str) -> None:
    """A provider registered with ``token_id``: note when (at most once per TOKEN_TOUCH_EVERY)."""
    stamp = now()
    async with sessions.begin() as session:
        await session.execute(update(ProviderToken).where(
            ProviderToken.id == token_id,
            or_(ProviderToken.last_used_at.is_(None),
                ProviderToken.last_used_at < stamp - TOKEN_TOUCH_EVERY)).values(last_used_at=stamp))


async def lookup_api_key(sessions: async_sessionmaker[AsyncSession], secret: str) -> KeyIdentity | None:
    if not secret.startswith(API_KEY_PREFIX):
        return None
    async with sessions() as session:
        row = (await session.execute(
            select(ApiKey.id, ApiKey.account_id, ApiKey.min_trust_level).where(
                ApiKey.key_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
        )).first()
    return KeyIdentity(row.id, row.account_id, row.min_trust_level) if row else None


async def find_provider_token(
    sessions: async_sessionmaker[AsyncSession], secret: str
) -> TokenIdentity | None:
    """The id and account of a valid, unrevoked provider token (the id lets a revocation find
    the sockets it opened)."""
    if not secret.startswith(PROVIDER_TOKEN_PREFIX):
        return None
    async with sessions() as session:
        row = (await session.execute(
            select(ProviderToken.id, ProviderToken.account_id).where(
                ProviderToken.token_hash == hash_secret(secret), ProviderToken.revoked_at.is_(None))
        )).first()
    return TokenIdentity(row.id, row.account_id) if row else None


async def lookup_provider_token(
    sessions: async_sessionmaker[AsyncSession], secret: str
) -> str | None:
    """Return the account id a valid, unrevoked provider token belongs to."""
    found = await find_provider_token(sessions, secret)
    return found.account_id if found else None


async def list_provider_tokens(sessions: async_sessionmaker[AsyncSession]) -> list[ProviderToken]:
    async with sessions() as session:
        return list((await session.execute(
            select(ProviderToken).order_by(ProviderToken.created_at))).scalars().all())


async def revoke_provider_token(sessions: async_sessionmaker[AsyncSession], ref: str) -> list[str]:
    """Revoke the one active provider token ``ref`` names: the token itself, a prefix of it (as
    `admin provider-token list` shows it), or its id or a prefix of the id. Returns the ids that
    matched; nothing is revoked unless exactly one did."""
    ref = ref.strip()
    if not ref:
        return []
    if ref.startswith(PROVIDER_TOKEN_PREFIX) and len(ref) == len(PROVIDER_TOKEN_PREFIX) + 64:
        match = ProviderToken.token_hash == hash_secret(ref)
    elif ref.startswith(PROVIDER_TOKEN_PREFIX):  # only the first 20 characters are stored
        match = ProviderToken.prefix.startswith(ref[:20], autoescape=True)
    else:
        match = ProviderToken.id.startswith(ref, autoescape=True)
    async with sessions.begin() as session:
        ids = list((await session.execute(select(ProviderToken.id).where(
            match, ProviderToken.revoked_at.is_(None)))).scalars())
        if len(ids) == 1:
            await session.execute(update(ProviderToken).where(ProviderToken.id == ids[0])
                                  .values(revoked_at=now()))
    return ids


async def revoked_provider_tokens(sessions: async_sessionmaker[AsyncSession],
                                  token_ids: set[str]) -> set[str]:
    """Which of ``token_ids`` are revoked now (polled by the coordinator, since the CLI writes
    straight to the database)."""
    if not token_ids:
        return set()
    async with sessions() as session:
        return set((await session.execute(select(ProviderToken.id).where(
            ProviderToken.id.in_(token_ids), ProviderToken.revoked_at.is_not(None)))).scalars())


async def revoke_api_key(sessions: async_sessionmaker[AsyncSession], key_id: str) -> bool:
    async with sessions.begin() as session:
        result = await session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now()))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_api_keys(sessions: async_sessionmaker[AsyncSession], account_id: str) -> list[KeyListing]:
    """An account's unrevoked keys, oldest first (no secrets: only their prefixes)."""
    async with sessions() as session:
        rows = (await session.execute(select(ApiKey).where(
            ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at, ApiKey.id))).scalars().all()
    return [KeyListing(r.id, r.prefix, r.label, aware(r.created_at),
                       aware(r.last_used_at) if r.last_used_at else None) for r in rows]


async def revoke_own_api_key(sessions: async_sessionmaker[AsyncSession], account_id: str, *,
                             secret: str | None = None, key_id: str | None = None,
                             ) -> tuple[str, str | None]:
    """Revoke the unrevoked key named by ``secret`` or ``key_id`` if ``account_id`` owns it.
    Returns ("revoked", its id), ("not_found", None) (no such key, or already revoked) or
    ("forbidden", None) (another account's key)."""
    if secret is not None:
        match = ApiKey.key_hash == hash_secret(secret)
    else:
        match = ApiKey.id == (key_id or "")
    async with sessions.begin() as session:
        row = (await session.execute(select(ApiKey.id, ApiKey.account_id).where(
            match, ApiKey.revoked_at.is_(None)))).first()
        if row is None:
            return "not_found", None
        if row.account_id != account_id:
            return "forbidden", None
        result = await session.execute(update(ApiKey).where(
            ApiKey.id == row.id, ApiKey.revoked_at.is_(None)).values(revoked_at=now()))
    return ("revoked", row.id) if result.rowcount else ("not_found", None)  # type: ignore[attr-defined]
