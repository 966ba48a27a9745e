"""Relational schema. Secrets are stored only as SHA-256 hashes; requests never store text."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Stored normalised (stripped, lower-case), so the unique index is case-insensitive; NULL for
    # accounts the CLI made, which sign in with keys only.
    email: Mapped[str | None] = mapped_column(String(320), unique=True, index=True, nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)  # argon2id
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LoginSession(Base):
    """A signed-in browser or CLI. Only hashes of the token and its CSRF token are stored;
    ``expires_at`` slides forward with ``last_seen_at`` (idle expiry)."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Every request made with this key needs providers at this trust level or above.
    min_trust_level: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ProviderToken(Base):
    __tablename__ = "provider_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(24))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProviderQuarantine(Base):
    """An identity key (and, when a certificate vouched for it, a serial) barred from routing
    until ``until`` after an untrust (trust.md §4 Decision). Append-only: the latest row wins."""

    __tablename__ = "provider_quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity_key: Mapped[str] = mapped_column(String(128), index=True)
    serial: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    reason: Mapped[str] = mapped_column(String(256))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RequestRecord(Base):
    """One consumer request: who, which model, which provider, how many tokens, how fast."""

    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # server-generated, unique
    api_key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    account_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    # in_progress (committed, not ended) | completed | failed | cancelled | interrupted (cut by a crash)
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_code: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    x_request_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    receipt: Mapped[str | None] = mapped_column(Text, nullable=True)  # canonical JSON
    receipt_signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    coordinator_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # whose in_progress row
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LedgerEntry(Base):
    """One change of one balance (billing.md §0.2, §11): never updated, never deleted."""

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("kind", "reference", name="uq_ledger_entries_kind_reference"),)
    # BIGINT on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)  # + credit, - debit
    withdrawable_delta_micro_usd: Mapped[int] = mapped_column(BigInteger)
    balance_after_micro_usd: Mapped[int] = mapped_column(BigInteger)
    reference: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    actor: Mapped[str] = mapped_column(String(64))  # admin account id or "system"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Balance(Base):
    """Cache of SUM(ledger amounts) per account, written in the same transaction as each row."""

    __tablename__ = "balances"
    __table_args__ = (
        CheckConstraint("balance_micro_usd >= 0", name="ck_balances_balance_nonnegative"),
        CheckConstraint("withdrawable_micro_usd >= 0 AND withdrawable_micro_usd <= balance_micro_usd",
                        name="ck_balances_withdrawable_range"),
    )
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    balance_micro_usd: Mapped[int] = mapped_column(BigInteger)
    withdrawable_micro_usd: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
