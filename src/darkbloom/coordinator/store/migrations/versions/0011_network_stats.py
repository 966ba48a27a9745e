"""Public network data (issue 10, api.md §9): secrets every coordinator process on one database
shares, first the HMAC key of leaderboard pseudonyms. (The stats read ``usage_records`` and
``provider_earnings`` through their existing ``created_at`` indexes.)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("coordinator_secrets")
