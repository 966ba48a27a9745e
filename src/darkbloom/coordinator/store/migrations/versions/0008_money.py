"""Money around requests (billing.md §3-§11): reservations, admin prices, usage records, provider
earnings, referrals, invite codes, the admin action log, and the account billing hold.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("billing_hold", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    op.create_table(
        "reservations",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("input_price", sa.BigInteger, nullable=False),
        sa.Column("output_price", sa.BigInteger, nullable=False),
        sa.Column("prompt_estimate", sa.Integer, nullable=False),
        sa.Column("max_tokens", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("coordinator_id", sa.String(32), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("settled_at", _TS, nullable=True),
    )
    op.create_index("ix_reservations_account_id", "reservations", ["account_id"])
    op.create_index("ix_reservations_state_created", "reservations", ["state", "created_at"])
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("input_price", sa.BigInteger, nullable=False),
        sa.Column("output_price", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
    )
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=True),
        sa.Column("provider_account_id", sa.String(32), nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("provider_payout_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("platform_fee_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("referral_reward_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("self_routed", sa.Boolean, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_usage_records_account_id", "usage_records", ["account_id"])
    op.create_index("ix_usage_records_provider_account_id", "usage_records", ["provider_account_id"])
    op.create_index("ix_usage_records_created_at", "usage_records", ["created_at"])
    op.create_table(
        "provider_earnings",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("provider_key", sa.String(200), nullable=True),
        sa.Column("job_id", sa.String(40), nullable=False, unique=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_provider_earnings_account_id", "provider_earnings", ["account_id"])
    op.create_index("ix_provider_earnings_provider_key", "provider_earnings", ["provider_key"])
    op.create_index("ix_provider_earnings_created_at", "provider_earnings", ["created_at"])
    op.create_table(
        "referral_codes",
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "referrals",
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("referrer_account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("code", sa.String(20), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_referrals_referrer_account_id", "referrals", ["referrer_account_id"])
    op.create_table(
        "invite_codes",
        sa.Column("code", sa.String(64), primary_key=True),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("used_count", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.CheckConstraint("used_count >= 0 AND used_count <= max_uses", name="ck_invite_codes_uses"),
    )
    op.create_table(
        "invite_redemptions",
        sa.Column("code", sa.String(64), sa.ForeignKey("invite_codes.code"), primary_key=True),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "admin_actions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target_account_id", sa.String(32), nullable=True),
        sa.Column("amount_micro_usd", sa.BigInteger, nullable=True),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_admin_actions_created_at", "admin_actions", ["created_at"])


def downgrade() -> None:
    for table in ("admin_actions", "invite_redemptions", "invite_codes", "referrals", "referral_codes",
                  "provider_earnings", "usage_records", "model_prices", "reservations"):
        op.drop_table(table)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("billing_hold")
