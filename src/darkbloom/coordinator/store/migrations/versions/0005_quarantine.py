"""Provider quarantine: identity keys (and vouched serials) kept unroutable for a while after an
untrust, across reconnects and coordinator restarts (trust.md §4 Decision).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("identity_key", sa.String(128), nullable=False),
        sa.Column("serial", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_provider_quarantine_identity_key", "provider_quarantine", ["identity_key"])
    op.create_index("ix_provider_quarantine_serial", "provider_quarantine", ["serial"])
    op.create_index("ix_provider_quarantine_until", "provider_quarantine", ["until"])


def downgrade() -> None:
    op.drop_table("provider_quarantine")
