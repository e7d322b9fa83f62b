"""baseline: the schema as vpnca created it before migrations existed

Revision ID: 0001
Revises:
Create Date: 2025-11-27

Written out operation by operation (never the models' `create_all`: the models move on, this
revision must not). When vpnca adopts a database created before migrations (its tables, no
`alembic_version`), this revision creates only the tables and indexes that database lacks (older
versions had fewer tables, and `create_all` only ever added whole tables) and checks that the
tables it has carry every column; Alembic then records the baseline and the later revisions run.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from vpnca.errors import SchemaOutdated

revision = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)  # vpnca.store.models.UtcDateTime stores through this type


def _table(name: str, *items: sa.schema.SchemaItem, indexes: Sequence[tuple[str, list[str]]] = ()) -> None:
    """Create table `name` with its indexes, or, when adopting, whatever of them is missing."""
    config = op.get_context().config
    if config is not None and config.attributes.get("adopt"):
        inspector = sa.inspect(op.get_bind())
        if inspector.has_table(name):
            have = {column["name"] for column in inspector.get_columns(name)}
            missing = [item.name for item in items if isinstance(item, sa.Column) and item.name not in have]
            if missing:
                raise SchemaOutdated(
                    f"table {name} lacks columns {', '.join(missing)}: this database was made by a vpnca "
                    "older than the baseline schema (revision 0001) and cannot be upgraded automatically")
            have_indexes = {index["name"] for index in inspector.get_indexes(name)}
            for index_name, columns in indexes:
                if index_name not in have_indexes:
                    op.create_index(index_name, name, columns, unique=False)
            return
    op.create_table(name, *items)
    for index_name, columns in indexes:
        op.create_index(index_name, name, columns, unique=False)


def upgrade() -> None:
    _table(
        "certificates",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("issuer", sa.String(length=128), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("not_before", TIME, nullable=False),
        sa.Column("not_after", TIME, nullable=False),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("invalidity_date", TIME, nullable=True),
        sa.Column("hold_released_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("serial"),
        indexes=[("ix_certificates_issuer_status", ["issuer", "status"]),
                 ("ix_certificates_not_after", ["not_after"]),
                 ("ix_certificates_status", ["status"])],
    )
    _table(
        "ca_certificates",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("ca_name", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("key_label", sa.String(length=128), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        indexes=[("ix_ca_certificates_role", ["role"])],
    )
    _table(
        "audit_log",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    _table(
        "enrollment_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("used_at", TIME, nullable=True),
        sa.Column("used_for_serial", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("token_id"),
    )
    _table(
        "pending_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("identities", sa.Text(), nullable=False),
        sa.Column("requester", sa.String(length=255), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.Column("csr_der", sa.LargeBinary(), nullable=True),
        sa.Column("transaction_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
        indexes=[("ix_pending_requests_transaction_id", ["transaction_id"])],
    )
    _table(
        "crls",
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ca_name", sa.String(length=128), nullable=False),
        sa.Column("delta_base", sa.Integer(), nullable=True),
        sa.Column("this_update", TIME, nullable=False),
        sa.Column("next_update", TIME, nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )
    _table(
        "ocsp_responses",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("hash_algorithm", sa.String(length=8), nullable=False),
        sa.Column("cert_status", sa.String(length=16), nullable=False),
        sa.Column("this_update", TIME, nullable=False),
        sa.Column("next_update", TIME, nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("serial", "hash_algorithm"),
        indexes=[("ix_ocsp_responses_next_update", ["next_update"]),
                 ("ix_ocsp_responses_this_update", ["this_update"])],
    )
    _table(
        "job_runs",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("last_run", TIME, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt", TIME, nullable=True),
        sa.PrimaryKeyConstraint("job"),
    )
    _table(
        "acme_eab_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("hmac_key", sa.LargeBinary(), nullable=False),
        sa.Column("allowed_identities", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    _table(
        "acme_accounts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_thumbprint", sa.String(length=64), nullable=False),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("eab_kid", sa.String(length=64), nullable=True),
        sa.Column("allowed_identities", sa.Text(), nullable=True),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_thumbprint"),
    )
    _table(
        "acme_nonces",
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("value"),
        indexes=[("ix_acme_nonces_expires_at", ["expires_at"])],
    )
    _table(
        "acme_orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("authorizations", sa.Text(), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("certificate_serial", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        indexes=[("ix_acme_orders_account_id", ["account_id"])],
    )
    _table(
        "acme_authorizations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("identifier_type", sa.String(length=8), nullable=False),
        sa.Column("identifier_value", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        indexes=[("ix_acme_authorizations_account_id", ["account_id"])],
    )
    _table(
        "acme_challenges",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("authorization_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validated_at", TIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        indexes=[("ix_acme_challenges_authorization_id", ["authorization_id"])],
    )


def downgrade() -> None:
    for name in ("acme_challenges", "acme_authorizations", "acme_orders", "acme_nonces", "acme_accounts",
                 "acme_eab_keys", "job_runs", "ocsp_responses", "crls", "pending_requests",
                 "enrollment_tokens", "audit_log", "ca_certificates", "certificates"):
        op.drop_table(name)
