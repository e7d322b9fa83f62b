"""indexes for the operators' queries at scale

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-27

- certificates (status, not_after): `vpnca report expiring` and the expiry gauge of /metrics (valid
  certificates ending within a window); it replaces the index on status alone, whose lookups
  (`vpnca list --status`, `vpnca status` counts) it serves as well.
- certificates (created_at): `vpnca list` and the evidence pack list by issuance time.
- audit_log (action, seq): the latest entry of one action (every CLI command looks up the last
  `config` entry) without reading the whole chain.
- crls (ca_name, number): the latest full or delta CRL of a CA (every CRL request, delta CRLs).
- pending_requests (status, created_at): `vpnca pending`.
- acme_orders (certificate_serial): revokeCert finds the order of a certificate.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_INDEXES = [
    ("ix_certificates_status_not_after", "certificates", ["status", "not_after"]),
    ("ix_certificates_created_at", "certificates", ["created_at"]),
    ("ix_audit_log_action_seq", "audit_log", ["action", "seq"]),
    ("ix_crls_ca_name_number", "crls", ["ca_name", "number"]),
    ("ix_pending_requests_status_created_at", "pending_requests", ["status", "created_at"]),
    ("ix_acme_orders_certificate_serial", "acme_orders", ["certificate_serial"]),
]


def upgrade() -> None:
    for name, table, columns in NEW_INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.drop_index("ix_certificates_status", table_name="certificates")


def downgrade() -> None:
    op.create_index("ix_certificates_status", "certificates", ["status"], unique=False)
    for name, table, _ in reversed(NEW_INDEXES):
        op.drop_index(name, table_name=table)
