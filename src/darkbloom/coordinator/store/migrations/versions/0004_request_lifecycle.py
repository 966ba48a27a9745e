"""Request lifecycle: a row is written when a request is committed and updated when it ends.

Rows still ``in_progress`` at a coordinator's start were cut by its crash and become
``interrupted``; ``coordinator_id`` says whose they are (several coordinators may share one
PostgreSQL database), and the status index keeps that sweep cheap.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("coordinator_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("updated_at", _TS, nullable=True))
        batch.add_column(sa.Column("ended_at", _TS, nullable=True))
        batch.create_index("ix_requests_status", ["status"])


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_status")
        batch.drop_column("ended_at")
        batch.drop_column("updated_at")
        batch.drop_column("coordinator_id")
