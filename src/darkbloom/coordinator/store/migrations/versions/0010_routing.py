"""Routing (issue 10): each provider identity's reputation and lifetime counters, kept across
reconnects and coordinator restarts (protocol.md §7, trust.md §7).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_COUNT = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "provider_reputation",
        sa.Column("provider_key", sa.String(200), primary_key=True),
        sa.Column("account_id", sa.String(32), nullable=True, index=True),
        sa.Column("jobs_succeeded", _COUNT, nullable=False, server_default="0"),
        sa.Column("jobs_failed", _COUNT, nullable=False, server_default="0"),
        sa.Column("timeouts", _COUNT, nullable=False, server_default="0"),
        sa.Column("challenges_passed", _COUNT, nullable=False, server_default="0"),
        sa.Column("challenges_failed", _COUNT, nullable=False, server_default="0"),
        sa.Column("response_ms_total", _COUNT, nullable=False, server_default="0"),
        sa.Column("response_samples", _COUNT, nullable=False, server_default="0"),
        sa.Column("requests_served", _COUNT, nullable=False, server_default="0"),
        sa.Column("tokens_generated", _COUNT, nullable=False, server_default="0"),
        # The provider process's own cumulative counts at its last heartbeat: the next one adds
        # only the difference (a smaller count means the process restarted: it adds whole).
        sa.Column("last_requests_served", _COUNT, nullable=False, server_default="0"),
        sa.Column("last_tokens_generated", _COUNT, nullable=False, server_default="0"),
        sa.Column("uptime_total_s", _COUNT, nullable=False, server_default="0"),
        sa.Column("uptime_hours", sa.Text, nullable=False, server_default="{}"),
        sa.Column("decode_tps", sa.Float, nullable=False, server_default="0"),
        sa.Column("score", sa.Float, nullable=False, server_default="0.5"),
        sa.Column("first_seen", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_reputation")
