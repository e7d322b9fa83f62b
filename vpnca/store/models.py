"""The ORM classes, each mapped onto its Core table (vpnca/store/tables.py): the columns are declared
there, once; the annotations here type the attributes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import DeclarativeBase, Mapped

from vpnca.store import tables
from vpnca.store.identity_type import Identities


class Base(DeclarativeBase):
    metadata = tables.metadata


class CertificateRecord(Base):
    """Every leaf certificate the CA has issued or started to issue."""

    __table__ = tables.certificates

    serial: Mapped[str]
    issuer: Mapped[str]
    profile: Mapped[str]
    subject: Mapped[str]
    identities: Mapped[Identities]
    status: Mapped[str]
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    requester: Mapped[str]
    protocol: Mapped[str]
    created_at: Mapped[datetime]
    der: Mapped[bytes | None]
    error: Mapped[str | None]
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[str | None]
    invalidity_date: Mapped[datetime | None]
    hold_released_at: Mapped[datetime | None]
    renew_after: Mapped[datetime | None]
    crl_shard: Mapped[int | None]
    crl_entry: Mapped[bytes | None]


class CaCertificate(Base):
    """CA certificates (root, sub-CA, OCSP signer) and the token labels of their keys."""

    __table__ = tables.ca_certificates

    id: Mapped[int]
    role: Mapped[str]
    ca_name: Mapped[str]
    serial: Mapped[str]
    key_label: Mapped[str | None]
    der: Mapped[bytes]
    created_at: Mapped[datetime]


class AuditEntry(Base):
    """One link of the audit hash chain: `entry_hash` covers `prev_hash` and the fields."""

    __table__ = tables.audit_log

    seq: Mapped[int]
    created_at: Mapped[str]
    actor: Mapped[str]
    action: Mapped[str]
    details: Mapped[str]
    prev_hash: Mapped[str]
    entry_hash: Mapped[str]


class EnrollmentToken(Base):
    """A one-time enrollment credential: only the SHA-256 of its secret is stored."""

    __table__ = tables.enrollment_tokens

    token_id: Mapped[str]
    secret_sha256: Mapped[str]
    identities: Mapped[Identities]
    profile: Mapped[str]
    protocol: Mapped[str]
    created_by: Mapped[str]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_for_serial: Mapped[str | None]


class PendingRequest(Base):
    """An enrollment waiting for an operator's `vpnca approve` (profiles with approval = true)."""

    __table__ = tables.pending_requests

    request_id: Mapped[str]
    profile: Mapped[str]
    identities: Mapped[Identities]
    requester: Mapped[str]
    protocol: Mapped[str]
    status: Mapped[str]
    created_at: Mapped[datetime]
    decided_by: Mapped[str | None]
    serial: Mapped[str | None]
    csr_der: Mapped[bytes | None]
    transaction_id: Mapped[str | None]


class CrlRecord(Base):
    """Every CRL signed, full or delta; the CRL number is the primary key, so it never repeats."""

    __table__ = tables.crls

    number: Mapped[int]
    ca_name: Mapped[str]
    delta_base: Mapped[int | None]
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    entries: Mapped[int]
    der: Mapped[bytes]


class OcspResponseRecord(Base):
    """A pre-signed OCSP response for one certificate and one CertID hash algorithm."""

    __table__ = tables.ocsp_responses

    serial: Mapped[str]
    hash_algorithm: Mapped[str]
    cert_status: Mapped[str]
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    der: Mapped[bytes]


class JobRun(Base):
    """The latest outcome of each scheduled job, for `vpnca status` and for retry backoff."""

    __table__ = tables.job_runs

    job: Mapped[str]
    last_run: Mapped[datetime]
    ok: Mapped[bool]
    message: Mapped[str]
    failures: Mapped[int]
    next_attempt: Mapped[datetime | None]


class AcmeEabKey(Base):
    """An ACME external account binding key (`vpnca acme eab create`): the identifiers it allows.

    The HMAC key itself is kept, as the binding's signature can only be checked with it; it is
    single use: the first account that presents it is bound to it.
    """

    __table__ = tables.acme_eab_keys

    kid: Mapped[str]
    hmac_key: Mapped[bytes]
    allowed_identities: Mapped[Identities]
    profile: Mapped[str]
    created_by: Mapped[str]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    account_id: Mapped[str | None]


class AcmeAccount(Base):
    """An ACME account: its current JWK, and (through its EAB key) what it may be issued."""

    __table__ = tables.acme_accounts

    id: Mapped[str]
    key_thumbprint: Mapped[str]
    jwk: Mapped[str]
    status: Mapped[str]
    contact: Mapped[str]
    eab_kid: Mapped[str | None]
    allowed_identities: Mapped[Identities | None]
    profile: Mapped[str]
    created_at: Mapped[datetime]


class AcmeNonce(Base):
    """A used ACME nonce (nonces are HMAC-signed and stateless until used; a replay finds its row),
    pruned after the nonce lifetime; two rows hold the shared HMAC key."""

    __table__ = tables.acme_nonces

    value: Mapped[str]
    expires_at: Mapped[datetime]


class AcmeOrder(Base):
    __table__ = tables.acme_orders

    id: Mapped[str]
    account_id: Mapped[str]
    status: Mapped[str]
    identifiers: Mapped[str]
    authorizations: Mapped[str]
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
    error: Mapped[str | None]
    certificate_serial: Mapped[str | None]
    replaces: Mapped[str | None]


class AcmeAuthorization(Base):
    __table__ = tables.acme_authorizations

    id: Mapped[str]
    account_id: Mapped[str]
    identifier_type: Mapped[str]
    identifier_value: Mapped[str]
    status: Mapped[str]
    expires_at: Mapped[datetime]


class AcmeChallenge(Base):
    __table__ = tables.acme_challenges

    id: Mapped[str]
    authorization_id: Mapped[str]
    type: Mapped[str]
    token: Mapped[str]
    status: Mapped[str]
    validated_at: Mapped[datetime | None]
    error: Mapped[str | None]
