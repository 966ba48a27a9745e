"""Accounts that sign in with an email and password, and their sessions (issue 9 "Sessions").

Passwords are argon2id hashes; session and CSRF tokens are stored only as SHA-256 hashes. The
argon2 calls are synchronous and CPU-heavy: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from darkbloom.coordinator.store.credentials import aware, hash_secret, now
from darkbloom.coordinator.store.tables import Account, LoginSession

SESSION_PREFIX = "dbs-"
MAX_EMAIL_CHARS = 254  # RFC 5321 path limit
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 1024
# Seen-at is written at most this often, so a busy session does not write on every request.
TOUCH_INTERVAL = timedelta(minutes=1)
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_hasher = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory profile


def normalise_email(raw: str) -> str | None:
    """The stored, compared form of an email (stripped, lower-case), or None when it is not a
    plausible address. Deliberately basic: delivery is the only real check."""
    email = raw.strip().lower()
    if not email or len(email) > MAX_EMAIL_CHARS or not email.isprintable():
        return None
    try:
        email.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return None
    return email if _EMAIL.fullmatch(email) else None


def password_problem(password: str) -> str | None:
    """Why ``password`` cannot be used, or None."""
    if len(password) < PASSWORD_MIN_CHARS:
        return f"password must be at least {PASSWORD_MIN_CHARS} characters"
    if len(password) > PASSWORD_MAX_CHARS:
        return f"password must be at most {PASSWORD_MAX_CHARS} characters"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return "password is not valid UTF-8"
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_hex(16))


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``. With no stored hash (unknown email, or an account
    without a password) it still verifies against a dummy hash, so both failures take as long."""
    try:
        _hasher.verify(stored or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
    return stored is not None


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_hex(32)


def csrf_matches(csrf_hash: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(csrf_hash, hash_secret(presented))


@dataclass(frozen=True, slots=True)
class AccountInfo:
    account_id: str
    email: str | None
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    session_id: str
    account_id: str
    email: str | None
    is_admin: bool
    csrf_hash: str


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    csrf_token: str


async def create_account(sessions: async_sessionmaker[AsyncSession], email: str,
                         password_hash: str) -> str | None:
    """A new account for an already-normalised ``email``; None when the email is taken (also by a
    concurrent sign-up, which the unique index catches)."""
    account_id = secrets.token_hex(12)
    try:
        async with sessions.begin() as session:
            session.add(Account(id=account_id, name="", created_at=now(), email=email,
                                password_hash=password_hash, is_admin=False))
    except IntegrityError:
        return None
    return account_id


async def find_login(sessions: async_sessionmaker[AsyncSession],
                     email: str) -> tuple[str, str | None] | None:
    """(account id, password hash) for a normalised email, or None."""
    async with sessions() as session:
        row = (await session.execute(select(Account.id, Account.password_hash)
                                     .where(Account.email == email))).first()
    return (row.id, row.password_hash) if row else None


async def get_account(sessions: async_sessionmaker[AsyncSession], account_id: str) -> AccountInfo | None:
    async with sessions() as session:
        row = await session.get(Account, account_id)
    return AccountInfo(row.id, row.email, row.is_admin, aware(row.created_at)) if row else None


async def open_session(sessions: async_sessionmaker[AsyncSession], account_id: str,
                       idle: timedelta) -> IssuedSession:
    token, csrf = new_session_token(), secrets.token_hex(32)
    stamp = now()
    async with sessions.begin() as session:
        session.add(LoginSession(id=secrets.token_hex(12), account_id=account_id,
                                 token_hash=hash_secret(token), csrf_hash=hash_secret(csrf),
                                 created_at=stamp, last_seen_at=stamp, expires_at=stamp + idle))
    return IssuedSession(token, csrf)


async def find_session(sessions: async_sessionmaker[AsyncSession], token: str, idle: timedelta,
                       at: datetime | None = None) -> SessionIdentity | None:
    """The live session ``token`` names, sliding its idle expiry forward (at most once a minute)."""
    if not token.startswith(SESSION_PREFIX):
        return None
    stamp = at or now()
    async with sessions() as session:
        row = (await session.execute(
            select(LoginSession.id, LoginSession.account_id, LoginSession.csrf_hash,
                   LoginSession.last_seen_at, Account.email, Account.is_admin)
            .join(Account, Account.id == LoginSession.account_id)
            .where(LoginSession.token_hash == hash_secret(token), LoginSession.expires_at > stamp)
        )).first()
        if row is None:
            return None
        if stamp - aware(row.last_seen_at) >= TOUCH_INTERVAL:
            await session.execute(update(LoginSession).where(LoginSession.id == row.id)
                                  .values(last_seen_at=stamp, expires_at=stamp + idle))
            await session.commit()
    return SessionIdentity(row.id, row.account_id, row.email, bool(row.is_admin), row.csrf_hash)


async def close_session(sessions: async_sessionmaker[AsyncSession], session_id: str) -> None:
    async with sessions.begin() as session:
        await session.execute(delete(LoginSession).where(LoginSession.id == session_id))


async def grant_admin(sessions: async_sessionmaker[AsyncSession], email: str) -> bool:
    """Mark the account with this (normalised) email an admin; False when there is none."""
    async with sessions.begin() as session:
        result = await session.execute(update(Account).where(Account.email == email)
                                       .values(is_admin=True))
    return bool(result.rowcount)  # type: ignore[attr-defined]

