"""Ledger and balances (billing.md §0, §2, §11): one signed micro-USD row per balance change,
``(kind, reference)`` unique for idempotency, and a checked balance cache per account.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("withdrawable_delta_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("balance_after_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("reference", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("kind", "reference", name="uq_ledger_entries_kind_reference"),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])
    op.create_index("ix_ledger_entries_request_id", "ledger_entries", ["request_id"])
    op.create_table(
        "balances",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("balance_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("withdrawable_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("balance_micro_usd >= 0", name="ck_balances_balance_nonnegative"),
        sa.CheckConstraint("withdrawable_micro_usd >= 0 AND withdrawable_micro_usd <= balance_micro_usd",
                           name="ck_balances_withdrawable_range"),
    )


def downgrade() -> None:
    op.drop_table("balances")
    op.drop_table("ledger_entries")
