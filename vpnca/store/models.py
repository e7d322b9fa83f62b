"""Database tables."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import DateTime, Dialect, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from vpnca.store.identity_type import Identities, IdentityList


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


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


class CertStatus(StrEnum):
    ISSUING = "issuing"  # serial reserved, not yet signed: an interrupted issuance if it stays
    VALID = "valid"
    REVOKED = "revoked"  # permanently, or on hold (reason certificateHold)
    FAILED = "failed"  # signing failed; the serial stays reserved and is never reused


class CertificateRecord(Base):
    """Every leaf certificate the CA has issued or started to issue."""

    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # lowercase hex
    issuer: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(Text)
    identities: Mapped[Identities] = mapped_column(IdentityList)
    status: Mapped[str] = mapped_column(String(16))
    not_before: Mapped[datetime] = mapped_column()
    not_after: Mapped[datetime] = mapped_column(index=True)
    requester: Mapped[str] = mapped_column(String(255))
    protocol: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(index=True)
    der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    invalidity_date: Mapped[datetime | None] = mapped_column(nullable=True)
    hold_released_at: Mapped[datetime | None] = mapped_column(nullable=True)  # for delta CRLs (removeFromCRL)
    renew_after: Mapped[datetime | None] = mapped_column(nullable=True)  # `vpnca renew-early`: renew now
    crl_shard: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its CDP's shard ([crl] shards)
    crl_entry: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # DER, written on revoke

    # a schema change here needs a migration (vpnca/store/migrations/versions) that makes the same change
    __table_args__ = (Index("ix_certificates_issuer_status", "issuer", "status"),
                      Index("ix_certificates_status_not_after", "status", "not_after"),
                      Index("ix_certificates_status_serial", "status", "serial"),  # `vpnca list --status`
                      # what a shard's CRL, a delta CRL's revocations and its released holds read, alone:
                      # their cost follows what changed, not the CA's size (vpnca/store/crls.py)
                      Index("ix_certificates_crl_shard", "issuer", "status", "crl_shard", "not_after"),
                      Index("ix_certificates_revoked_at", "issuer", "status", "revoked_at"),
                      Index("ix_certificates_hold_released_at", "issuer", "status", "hold_released_at"))


class CaCertificate(Base):
    """CA certificates (root, sub-CA, OCSP signer) and the token labels of their keys."""

    __tablename__ = "ca_certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(16), index=True)  # root | sub | ocsp
    ca_name: Mapped[str] = mapped_column(String(128))
    serial: Mapped[str] = mapped_column(String(40))
    key_label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()


class AuditEntry(Base):
    """One link of the audit hash chain: `entry_hash` covers `prev_hash` and the fields."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(String(40))  # ISO 8601, hashed as written
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_log_action_seq", "action", "seq"),)  # the latest entry of an action


class EnrollmentToken(Base):
    """A one-time enrollment credential: only the SHA-256 of its secret is stored."""

    __tablename__ = "enrollment_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    identities: Mapped[Identities] = mapped_column(IdentityList)
    profile: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(16))  # est | scep
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    used_for_serial: Mapped[str | None] = mapped_column(String(40), nullable=True)


class PendingRequest(Base):
    """An enrollment waiting for an operator's `vpnca approve` (profiles with approval = true)."""

    __tablename__ = "pending_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the CSR DER
    profile: Mapped[str] = mapped_column(String(32))
    identities: Mapped[Identities] = mapped_column(IdentityList)
    requester: Mapped[str] = mapped_column(String(255))
    protocol: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | rejected | issued
    created_at: Mapped[datetime] = mapped_column()
    decided_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(40), nullable=True)
    csr_der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # to finish after approval
    transaction_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # SCEP polling

    __table_args__ = (Index("ix_pending_requests_status_created_at", "status", "created_at"),)


class CrlRecord(Base):
    """Every CRL signed, full or delta; the CRL number is the primary key, so it never repeats."""

    __tablename__ = "crls"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ca_name: Mapped[str] = mapped_column(String(128))
    delta_base: Mapped[int | None] = mapped_column(Integer, nullable=True)  # set on delta CRLs
    this_update: Mapped[datetime] = mapped_column()
    next_update: Mapped[datetime] = mapped_column()
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_crls_ca_name_number", "ca_name", "number"),)  # the latest CRL of a CA


class OcspResponseRecord(Base):
    """A pre-signed OCSP response for one certificate and one CertID hash algorithm."""

    __tablename__ = "ocsp_responses"

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    hash_algorithm: Mapped[str] = mapped_column(String(8), primary_key=True)  # sha1 | sha256
    cert_status: Mapped[str] = mapped_column(String(16))  # good | revoked
    this_update: Mapped[datetime] = mapped_column(index=True)  # responders poll for changes by it
    next_update: Mapped[datetime] = mapped_column()
    der: Mapped[bytes] = mapped_column(LargeBinary)

    # `vpnca status` counts the fresh answers on this index alone (vpnca/store/ocsp_backlog.py)
    __table_args__ = (Index("ix_ocsp_responses_hash_algorithm_next_update", "hash_algorithm", "next_update"),)


class JobRun(Base):
    """The latest outcome of each scheduled job, for `vpnca status` and for retry backoff."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run: Mapped[datetime] = mapped_column()
    ok: Mapped[bool] = mapped_column()
    message: Mapped[str] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive
    next_attempt: Mapped[datetime | None] = mapped_column(nullable=True)


class AcmeEabKey(Base):
    """An ACME external account binding key (`vpnca acme eab create`): the identifiers it allows.

    The HMAC key itself is kept, as the binding's signature can only be checked with it; it is
    single use: the first account that presents it is bound to it.
    """

    __tablename__ = "acme_eab_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    hmac_key: Mapped[bytes] = mapped_column(LargeBinary)
    allowed_identities: Mapped[Identities] = mapped_column(IdentityList)
    profile: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    account_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AcmeAccount(Base):
    """An ACME account: its current JWK, and (through its EAB key) what it may be issued."""

    __tablename__ = "acme_accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_thumbprint: Mapped[str] = mapped_column(String(64), unique=True)  # RFC 7638, base64url SHA-256
    jwk: Mapped[str] = mapped_column(Text)  # canonical JSON of the public key
    status: Mapped[str] = mapped_column(String(16))  # valid | deactivated | revoked
    contact: Mapped[str] = mapped_column(Text)  # JSON list of URLs
    eab_kid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    allowed_identities: Mapped[Identities | None] = mapped_column(IdentityList, nullable=True)  # None: policy
    profile: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column()


class AcmeNonce(Base):
    """A used ACME nonce (nonces are HMAC-signed and stateless until used; a replay finds its row),
    pruned after the nonce lifetime; two rows hold the shared HMAC key."""

    __tablename__ = "acme_nonces"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AcmeOrder(Base):
    __tablename__ = "acme_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending | ready | processing | valid | invalid
    identifiers: Mapped[str] = mapped_column(Text)  # JSON list of {"type", "value"}
    authorizations: Mapped[str] = mapped_column(Text)  # JSON list of authorization ids
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # a problem document, JSON
    certificate_serial: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    replaces: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)  # RFC 9773: serial


class AcmeAuthorization(Base):
    __tablename__ = "acme_authorizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    identifier_type: Mapped[str] = mapped_column(String(8))  # dns | ip
    identifier_value: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # pending | valid | invalid | deactivated | expired
    expires_at: Mapped[datetime] = mapped_column()


class AcmeChallenge(Base):
    __tablename__ = "acme_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    authorization_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(16))  # http-01 | dns-01
    token: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending | processing | valid | invalid
    validated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # a problem document, JSON
