"""The database tables, in SQLAlchemy Core.

The ORM classes (vpnca/store/models.py) are mapped onto these tables; the operator's read-only commands
(`vpnca status`, `list`, `report`) query the tables alone, so that they never import or configure the ORM
(a third of their start-up time). A schema change here needs a migration (vpnca/store/migrations/versions)
that makes the same change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from vpnca.store.identity_type import IdentityList


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class CertStatus(StrEnum):
    ISSUING = "issuing"  # serial reserved, not yet signed: an interrupted issuance if it stays
    VALID = "valid"
    REVOKED = "revoked"  # permanently, or on hold (reason certificateHold)
    FAILED = "failed"  # signing failed; the serial stays reserved and is never reused


metadata = MetaData()

# every leaf certificate the CA has issued or started to issue
certificates = Table(
    "certificates", metadata,
    Column("serial", String(40), primary_key=True),  # lowercase hex
    Column("issuer", String(128), nullable=False),
    Column("profile", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("identities", IdentityList(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("not_before", UtcDateTime(), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False, index=True),
    Column("requester", String(255), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False, index=True),
    Column("der", LargeBinary, nullable=True),
    Column("error", Text, nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("revocation_reason", String(32), nullable=True),
    Column("invalidity_date", UtcDateTime(), nullable=True),
    Column("hold_released_at", UtcDateTime(), nullable=True),  # for delta CRLs (removeFromCRL)
    Column("renew_after", UtcDateTime(), nullable=True),  # `vpnca renew-early`: renew now
    Column("crl_shard", Integer, nullable=True),  # its CDP's shard ([crl] shards)
    Column("crl_entry", LargeBinary, nullable=True),  # DER, written on revoke
    Index("ix_certificates_issuer_status", "issuer", "status"),
    Index("ix_certificates_status_not_after", "status", "not_after"),
    Index("ix_certificates_status_serial", "status", "serial"),  # `vpnca list --status`
    # what a shard's CRL, a delta CRL's revocations and its released holds read, alone: their cost
    # follows what changed, not the CA's size (vpnca/store/crls.py)
    Index("ix_certificates_crl_shard", "issuer", "status", "crl_shard", "not_after"),
    Index("ix_certificates_revoked_at", "issuer", "status", "revoked_at"),
    Index("ix_certificates_hold_released_at", "issuer", "status", "hold_released_at"),
)

# CA certificates (root, sub-CA, OCSP signer, SCEP RA) and the token labels of their keys
ca_certificates = Table(
    "ca_certificates", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("role", String(16), nullable=False, index=True),  # root | sub | ocsp | scep-ra
    Column("ca_name", String(128), nullable=False),
    Column("serial", String(40), nullable=False),
    Column("key_label", String(128), nullable=True),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# one link of the audit hash chain each: `entry_hash` covers `prev_hash` and the fields
audit_log = Table(
    "audit_log", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("created_at", String(40), nullable=False),  # ISO 8601, hashed as written
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("details", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Index("ix_audit_log_action_seq", "action", "seq"),  # the latest entry of an action
)

# one-time enrollment credentials: only the SHA-256 of the secret is stored
enrollment_tokens = Table(
    "enrollment_tokens", metadata,
    Column("token_id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("identities", IdentityList(), nullable=False),
    Column("profile", String(32), nullable=False),
    Column("protocol", String(16), nullable=False),  # est | scep
    Column("created_by", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
    Column("used_for_serial", String(40), nullable=True),
)

# enrollments waiting for an operator's `vpnca approve` (profiles with approval = true)
pending_requests = Table(
    "pending_requests", metadata,
    Column("request_id", String(64), primary_key=True),  # SHA-256 of the CSR DER
    Column("profile", String(32), nullable=False),
    Column("identities", IdentityList(), nullable=False),
    Column("requester", String(255), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | rejected | issued
    Column("created_at", UtcDateTime(), nullable=False),
    Column("decided_by", String(255), nullable=True),
    Column("serial", String(40), nullable=True),
    Column("csr_der", LargeBinary, nullable=True),  # to finish after approval
    Column("transaction_id", String(128), nullable=True, index=True),  # SCEP polling
    Index("ix_pending_requests_status_created_at", "status", "created_at"),
)

# every CRL signed, full or delta; the CRL number is the primary key, so it never repeats
crls = Table(
    "crls", metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("ca_name", String(128), nullable=False),
    Column("delta_base", Integer, nullable=True),  # set on delta CRLs
    Column("this_update", UtcDateTime(), nullable=False),
    Column("next_update", UtcDateTime(), nullable=False),
    Column("entries", Integer, nullable=False),
    Column("der", LargeBinary, nullable=False),
    Index("ix_crls_ca_name_number", "ca_name", "number"),  # the latest CRL of a CA
)

# pre-signed OCSP responses: one per certificate and CertID hash algorithm
ocsp_responses = Table(
    "ocsp_responses", metadata,
    Column("serial", String(40), primary_key=True),
    Column("hash_algorithm", String(8), primary_key=True),  # sha1 | sha256
    Column("cert_status", String(16), nullable=False),  # good | revoked
    Column("this_update", UtcDateTime(), nullable=False, index=True),  # responders poll for changes by it
    Column("next_update", UtcDateTime(), nullable=False),
    Column("der", LargeBinary, nullable=False),
    # `vpnca status` counts the fresh answers on this index alone (vpnca/store/ocsp_backlog.py)
    Index("ix_ocsp_responses_hash_algorithm_next_update", "hash_algorithm", "next_update"),
)

# the latest outcome of each scheduled job, for `vpnca status` and for retry backoff
job_runs = Table(
    "job_runs", metadata,
    Column("job", String(64), primary_key=True),
    Column("last_run", UtcDateTime(), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("message", Text, nullable=False),
    Column("failures", Integer, nullable=False, default=0),  # consecutive
    Column("next_attempt", UtcDateTime(), nullable=True),
)

# ACME external account binding keys (`vpnca acme eab create`) and the identifiers they allow; the HMAC
# key is kept, as the binding's signature can only be checked with it; single use: the first account
# that presents it is bound to it
acme_eab_keys = Table(
    "acme_eab_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("hmac_key", LargeBinary, nullable=False),
    Column("allowed_identities", IdentityList(), nullable=False),
    Column("profile", String(32), nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("account_id", String(64), nullable=True),
)

# ACME accounts: the current JWK, and (through the EAB key) what each may be issued
acme_accounts = Table(
    "acme_accounts", metadata,
    Column("id", String(64), primary_key=True),
    Column("key_thumbprint", String(64), nullable=False, unique=True),  # RFC 7638, base64url SHA-256
    Column("jwk", Text, nullable=False),  # canonical JSON of the public key
    Column("status", String(16), nullable=False),  # valid | deactivated | revoked
    Column("contact", Text, nullable=False),  # JSON list of URLs
    Column("eab_kid", String(64), nullable=True),
    Column("allowed_identities", IdentityList(), nullable=True),  # None: the policy decides
    Column("profile", String(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# used ACME nonces (nonces are HMAC-signed and stateless until used; a replay finds its row), pruned
# after the nonce lifetime; two rows hold the shared HMAC key
acme_nonces = Table(
    "acme_nonces", metadata,
    Column("value", String(64), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False, index=True),
)

acme_orders = Table(
    "acme_orders", metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False),  # pending | ready | processing | valid | invalid
    Column("identifiers", Text, nullable=False),  # JSON list of {"type", "value"}
    Column("authorizations", Text, nullable=False),  # JSON list of authorization ids
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("error", Text, nullable=True),  # a problem document, JSON
    Column("certificate_serial", String(40), nullable=True, index=True),
    Column("replaces", String(40), nullable=True, index=True),  # RFC 9773: the serial it replaces
)

acme_authorizations = Table(
    "acme_authorizations", metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("identifier_type", String(8), nullable=False),  # dns | ip
    Column("identifier_value", String(255), nullable=False),
    Column("status", String(16), nullable=False),  # pending | valid | invalid | deactivated | expired
    Column("expires_at", UtcDateTime(), nullable=False),
)

acme_challenges = Table(
    "acme_challenges", metadata,
    Column("id", String(64), primary_key=True),
    Column("authorization_id", String(64), nullable=False, index=True),
    Column("type", String(16), nullable=False),  # http-01 | dns-01
    Column("token", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending | processing | valid | invalid
    Column("validated_at", UtcDateTime(), nullable=True),
    Column("error", Text, nullable=True),  # a problem document, JSON
)
