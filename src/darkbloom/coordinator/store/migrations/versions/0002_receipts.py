"""Receipts on request records (hashes, counts and a signature: never text), by X-Request-ID.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("x_request_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("receipt", sa.Text, nullable=True))
        batch.add_column(sa.Column("receipt_signature", sa.String(200), nullable=True))
        batch.create_index("ix_requests_x_request_id", ["x_request_id"])


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_index("ix_requests_x_request_id")
        batch.drop_column("receipt_signature")
        batch.drop_column("receipt")
        batch.drop_column("x_request_id")
