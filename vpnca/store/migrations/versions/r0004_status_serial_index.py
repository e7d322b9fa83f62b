"""an index for streaming listings by status

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

- certificates (status, serial): `vpnca list --status S` streams in serial order (keyset paging with
  `--after SERIAL`) straight from this index; with (status, not_after) alone the database sorted every
  row of the status before returning the first (1.8 s at 1,000,000 certificates on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_certificates_status_serial", "certificates", ["status", "serial"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_certificates_status_serial", table_name="certificates")
