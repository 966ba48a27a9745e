"""Accounts, API keys and provider tokens. Raw secrets are returned once and never stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.tables import Account, ApiKey, ProviderToken

API_KEY_PREFIX = "sk-db-"
PROVIDER_TOKEN_PREFIX = "darkbloom-pt-"
LOCAL_ACCOUNT_ID = "local"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _new_id() -> str:
    return secrets.token_hex(12)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    key_id: str
    account_id: str
    min_trust_level: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    id: str
    secret: str
    prefix: str
    account_id: str


async def ensure_account(session: AsyncSession, account_id: str, name: str = "") -> None:
    if await session.get(Account, account_id) is None:
        session.add(Account(id=account_id, name=name, created_at=now()))
        await session.flush()


async def create_api_key(
    sessions: async_sessionmaker[AsyncSession], account_id: str = LOCAL_ACCOUNT_ID, label: str = "",
    min_trust_level: str | None = None,
) -> IssuedSecret:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with sessions.begin() as session:
        await ensure_account(session, account_id)
        row = ApiKey(id=_new_id(), account_id=account_id, prefix=secret[:12],
                     key_hash=hash_secret(secret), label=label, created_at=now(),
                     min_trust_level=min_trust_level)
        session.add(row)
    return IssuedSecret(row.id, secret, row.prefix, account_id)


async def create_provider_token(
    sessions: async_sessionmaker[AsyncSession], account_id: str = LOCAL_ACCOUNT_ID, label: str = ""
) -> IssuedSecret:
    secret = PROVIDER_TOKEN_PREFIX + secrets.token_hex(32)
    async with sessions.begin() as session:
        await ensure_account(session, account_id)
        row = ProviderToken(id=_new_id(), account_id=account_id, prefix=secret[:20],
                            token_hash=hash_secret(secret), label=label, created_at=now())
        session.add(row)
    return IssuedSecret(row.id, secret, row.prefix, account_id)


async def lookup_api_key(sessions: async_sessionmaker[AsyncSession], secret: str) -> KeyIdentity | None:
    if not secret.startswith(API_KEY_PREFIX):
        return None
    async with sessions() as session:
        row = (await session.execute(
            select(ApiKey.id, ApiKey.account_id, ApiKey.min_trust_level).where(
                ApiKey.key_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
        )).first()
    return KeyIdentity(row.id, row.account_id, row.min_trust_level) if row else None


async def lookup_provider_token(
    sessions: async_sessionmaker[AsyncSession], secret: str
) -> str | None:
    """Return the account id a valid, unrevoked provider token belongs to."""
    if not secret.startswith(PROVIDER_TOKEN_PREFIX):
        return None
    async with sessions() as session:
        return (await session.execute(
            select(ProviderToken.account_id).where(
                ProviderToken.token_hash == hash_secret(secret), ProviderToken.revoked_at.is_(None))
        )).scalar_one_or_none()


async def revoke_api_key(sessions: async_sessionmaker[AsyncSession], key_id: str) -> bool:
    async with sessions.begin() as session:
        result = await session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now()))
    return bool(result.rowcount)  # type: ignore[attr-defined]
