"""Stripe (billing.md §6, §9): Checkout top-ups, webhook events already acted on, Connect
accounts and withdrawals.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "billing_sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("stripe_session_id", sa.String(128), nullable=True, unique=True),
        sa.Column("payment_intent_id", sa.String(128), nullable=True),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("credited_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("reversed_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("referral_code", sa.String(20), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
    )
    op.create_index("ix_billing_sessions_account_id", "billing_sessions", ["account_id"])
    op.create_index("ix_billing_sessions_payment_intent_id", "billing_sessions", ["payment_intent_id"])
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("endpoint", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
    )
    op.create_table(
        "stripe_connect_accounts",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("stripe_account_id", sa.String(128), nullable=False, unique=True),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("destination_type", sa.String(8), nullable=False),
        sa.Column("destination_last4", sa.String(4), nullable=False),
        sa.Column("instant_eligible", sa.Boolean, nullable=False),
        sa.Column("currently_due", sa.Text, nullable=False),
        sa.Column("synced_event_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "stripe_withdrawals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("stripe_account_id", sa.String(128), nullable=False),
        sa.Column("transfer_id", sa.String(128), nullable=True),
        sa.Column("payout_id", sa.String(128), nullable=True),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("fee_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("net_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.String(300), nullable=True),
        sa.Column("refunded", sa.Boolean, nullable=False),
        sa.Column("arrival_unix", sa.BigInteger, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_stripe_withdrawals_account_created", "stripe_withdrawals",
                    ["account_id", "created_at"])
    op.create_index("ix_stripe_withdrawals_transfer_id", "stripe_withdrawals", ["transfer_id"])
    op.create_index("ix_stripe_withdrawals_payout_id", "stripe_withdrawals", ["payout_id"])


def downgrade() -> None:
    for table in ("stripe_withdrawals", "stripe_connect_accounts", "stripe_events", "billing_sessions"):
        op.drop_table(table)
