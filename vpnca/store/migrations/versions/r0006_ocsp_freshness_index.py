"""an index for counting fresh pre-signed OCSP answers

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

- ocsp_responses (hash_algorithm, next_update) in place of (next_update): `vpnca status` counts the
  answers still fresh on this index alone (the pre-signing backlog) instead of joining every certificate
  with its answers; every query by next_update names the hash too, so the old index only cost writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ocsp_responses_hash_algorithm_next_update", "ocsp_responses",
                    ["hash_algorithm", "next_update"], unique=False)
    op.drop_index("ix_ocsp_responses_next_update", table_name="ocsp_responses")


def downgrade() -> None:
    op.create_index("ix_ocsp_responses_next_update", "ocsp_responses", ["next_update"], unique=False)
    op.drop_index("ix_ocsp_responses_hash_algorithm_next_update", table_name="ocsp_responses")
