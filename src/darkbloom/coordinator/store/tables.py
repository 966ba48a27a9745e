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
    Index,
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
    # billing.md §6: a refund or dispute Stripe could not take back blocks new reservations.
    billing_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


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
    # When a provider last registered with it (at most hourly): NULL is a machine linked and
    # never started (GET /v1/me/providers' "never_seen").
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DeviceCode(Base):
    """One device-code login (api.md §6, RFC 8628 shape): ``pending`` until a signed-in account
    approves ``user_code``, ``approved`` until the device's poll takes its provider token
    (``consumed``: the token is issued once). Only the device code's hash is stored; the user code
    is short-lived and typed by a person, so it is kept as it is (upper case, no dash)."""

    __tablename__ = "device_codes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_code: Mapped[str] = mapped_column(String(8), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | consumed
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # minted on consumption
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_poll_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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


class ProviderReputation(Base):
    """A provider identity's track record across reconnects and restarts (protocol.md §7). The
    key is the attested identity key, or ``token:<id>`` for an unattested provider with a token.
    ``uptime_hours``: JSON {hour (unix seconds // 3600): seconds seen} for the last 24 hours."""

    __tablename__ = "provider_reputation"
    provider_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    jobs_succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    jobs_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    timeouts: Mapped[int] = mapped_column(BigInteger, default=0)
    challenges_passed: Mapped[int] = mapped_column(BigInteger, default=0)
    challenges_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    response_ms_total: Mapped[int] = mapped_column(BigInteger, default=0)
    response_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    requests_served: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_generated: Mapped[int] = mapped_column(BigInteger, default=0)
    last_requests_served: Mapped[int] = mapped_column(BigInteger, default=0)
    last_tokens_generated: Mapped[int] = mapped_column(BigInteger, default=0)
    uptime_total_s: Mapped[int] = mapped_column(BigInteger, default=0)
    uptime_hours: Mapped[str] = mapped_column(Text, default="{}")
    decode_tps: Mapped[float] = mapped_column(Float, default=0.0)
    score: Mapped[float] = mapped_column(Float, default=0.5)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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


class Reservation(Base):
    """The money held for one request until it settles (billing.md §3, §4), with the prices it was
    reserved at. ``open`` rows left by a crash are refunded when a coordinator starts."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_state_created", "state", "created_at"),)
    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    input_price: Mapped[int] = mapped_column(BigInteger)
    output_price: Mapped[int] = mapped_column(BigInteger)
    prompt_estimate: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # open | settled | refunded
    coordinator_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ModelPrice(Base):
    """An admin's price for a model (PUT /v1/admin/pricing), over the catalog's."""

    __tablename__ = "model_prices"
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    input_price: Mapped[int] = mapped_column(BigInteger)  # micro-USD per million tokens
    output_price: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(64))


class UsageRecord(Base):
    """One settled request (billing.md §11): counts and money, never text."""

    __tablename__ = "usage_records"
    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), index=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider_account_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger)
    provider_payout_micro_usd: Mapped[int] = mapped_column(BigInteger)
    platform_fee_micro_usd: Mapped[int] = mapped_column(BigInteger)
    referral_reward_micro_usd: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # completed | partial
    self_routed: Mapped[bool] = mapped_column(Boolean)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ProviderEarning(Base):
    """A provider account's payout for one request, per node (billing.md §4 step 3)."""

    __tablename__ = "provider_earnings"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    provider_id: Mapped[str] = mapped_column(String(64))  # the session id
    provider_key: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    job_id: Mapped[str] = mapped_column(String(40), unique=True)
    model: Mapped[str] = mapped_column(String(256))
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ReferralCode(Base):
    """A referrer's one code (billing.md §7), stored upper-case."""

    __tablename__ = "referral_codes"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Referral(Base):
    """Who referred an account: once, permanently, never itself."""

    __tablename__ = "referrals"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    referrer_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InviteCode(Base):
    """Admin-made credit codes (billing.md §8)."""

    __tablename__ = "invite_codes"
    __table_args__ = (CheckConstraint("used_count >= 0 AND used_count <= max_uses",
                                      name="ck_invite_codes_uses"),)
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    max_uses: Mapped[int] = mapped_column(Integer)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(64))


class InviteRedemption(Base):
    __tablename__ = "invite_redemptions"
    code: Mapped[str] = mapped_column(ForeignKey("invite_codes.code"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AdminAction(Base):
    """Every admin action that moves money or changes prices or codes (billing.md §10)."""

    __tablename__ = "admin_actions"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    actor: Mapped[str] = mapped_column(String(64))  # admin account id, or "admin-key"
    action: Mapped[str] = mapped_column(String(32))
    target_account_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    amount_micro_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # small JSON, never secrets
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# --- Stripe (billing.md §6, §9) ---


class BillingSession(Base):
    """One Stripe Checkout top-up (billing.md §6): ``pending`` until Stripe reports it paid
    (``completed``, credited once) or abandoned (``expired``). ``reversed_micro_usd`` is what
    refunds and disputes have taken back (or put on hold) since."""

    __tablename__ = "billing_sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    stripe_session_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)  # asked for
    credited_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)  # what Stripe collected
    reversed_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    referral_code: Mapped[str | None] = mapped_column(String(20), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | completed | expired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StripeEvent(Base):
    """A Stripe webhook event already acted on: a second delivery of the same id changes nothing."""

    __tablename__ = "stripe_events"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(16))  # checkout | connect
    type: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StripeConnectAccount(Base):
    """An account's Stripe Connect Express account and what Stripe last said about it (§9)."""

    __tablename__ = "stripe_connect_accounts"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    stripe_account_id: Mapped[str] = mapped_column(String(128), unique=True)
    country: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16))  # pending | ready | restricted | rejected
    destination_type: Mapped[str] = mapped_column(String(8), default="")  # bank | card | ""
    destination_last4: Mapped[str] = mapped_column(String(4), default="")
    instant_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    currently_due: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of requirement names
    # Stripe's `created` of the newest account.updated applied: an older one arriving late is stale.
    synced_event_at: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StripeWithdrawal(Base):
    """One withdrawal to a Connect account (§9): pending → transferred → paid, or failed (refunded
    once, guarded by ``refunded``). Amounts: ``amount = fee + net``, ``net`` whole cents."""

    __tablename__ = "stripe_withdrawals"
    __table_args__ = (Index("ix_stripe_withdrawals_account_created", "account_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    stripe_account_id: Mapped[str] = mapped_column(String(128))
    transfer_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    payout_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    fee_micro_usd: Mapped[int] = mapped_column(BigInteger)
    net_micro_usd: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[str] = mapped_column(String(16))  # standard | instant
    status: Mapped[str] = mapped_column(String(16))  # pending | transferred | paid | failed
    failure_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    refunded: Mapped[bool] = mapped_column(Boolean, default=False)
    arrival_unix: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --- Public network data (api.md §9) ---


class CoordinatorSecret(Base):
    """A secret every coordinator process sharing this database must agree on, made once by the
    first process that needs it (e.g. ``pseudonym``: the HMAC key of leaderboard pseudonyms)."""

    __tablename__ = "coordinator_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))  # hex
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
