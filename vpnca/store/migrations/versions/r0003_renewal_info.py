"""ACME Renewal Information (RFC 9773) and early renewal

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

- certificates.renew_after: set by `vpnca renew-early` (profile, serial or all): from this moment the
  certificate should be renewed; renewalInfo answers a window that starts then, and `vpnca agent` asks
  `Store.renew_early_due`. NULL: the usual window (about 2/3 of the lifetime).
- acme_orders.replaces: the serial of the certificate an order replaces (RFC 9773 5, newOrder
  `replaces`), indexed: a certificate replaced once is not replaced again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)  # vpnca.store.models.UtcDateTime stores through this type


def upgrade() -> None:
    op.add_column("certificates", sa.Column("renew_after", TIME, nullable=True))
    op.add_column("acme_orders", sa.Column("replaces", sa.String(length=40), nullable=True))
    op.create_index("ix_acme_orders_replaces", "acme_orders", ["replaces"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_acme_orders_replaces", table_name="acme_orders")
    with op.batch_alter_table("acme_orders") as batch:
        batch.drop_column("replaces")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("renew_after")
