"""Who is enrolling: one-time tokens and client certificates, checked against the register (EST, SCEP;
ACME accounts are Requesters too)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vpnca.clock import SYSTEM_CLOCK, Clock
from vpnca.config import Settings
from vpnca.errors import NotAuthenticated, NotAuthorized
from vpnca.identities import IkeIdentity, identities_of_certificate
from vpnca.store import CertificateRecord, CertStatus, EnrollmentToken, Store
from vpnca.x509util import serial_hex


@dataclass(frozen=True)
class Requester:
    """Who is enrolling, and what the credential lets them have."""

    name: str
    method: str  # token | client-cert | bootstrap-cert
    allowed_identities: frozenset[IkeIdentity] | None
    profile: str | None = None  # the one profile this credential may enroll for
    token_id: str | None = None
    current: CertificateRecord | None = None  # the certificate being renewed
    issued_serial: str | None = None  # a token already used: the certificate it was used for
    # a vpnca certificate expired less than est.reenroll_grace ago: good for EST re-enrollment only
    expired_at: datetime | None = None
    preapproved: bool = False  # an operator bound this credential (ACME EAB): no approval step


@dataclass(frozen=True)
class NewToken:
    token_id: str
    secret: str
    expires_at: datetime


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def option_safe_key(nbytes: int) -> tuple[bytes, str]:
    """`nbytes` random bytes and their base64url text, which never begins with '-': clients take these
    values as `--eab-hmac-key VALUE`, `-u ID:SECRET`, and an option parser reads '-...' as an option."""
    while True:
        key = secrets.token_bytes(nbytes)
        text = _b64url(key)
        if not text.startswith("-"):
            return key, text


def option_safe_token(nbytes: int) -> str:
    """Like `secrets.token_urlsafe(nbytes)`, never beginning with '-' (see `option_safe_key`)."""
    return option_safe_key(nbytes)[1]


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    store: Store, *, identities: tuple[IkeIdentity, ...], profile: str, protocol: str, ttl: timedelta,
    created_by: str, clock: Clock = SYSTEM_CLOCK,
) -> NewToken:
    """A single-use credential bound to `identities` and `profile`; only its hash is stored."""
    now = clock.now()
    token = NewToken(secrets.token_hex(8), option_safe_token(24), now + ttl)  # hex id: never '-'
    store.add_enrollment_token(EnrollmentToken(
        token_id=token.token_id, secret_sha256=_secret_hash(token.secret),
        identities=identities, profile=profile, protocol=protocol,
        created_by=created_by, created_at=now, expires_at=token.expires_at,
    ))
    return token


def check_token(store: Store, token_id: str, secret: str, *, protocol: str) -> Requester:
    """Verify a token credential without using it up (that happens when the certificate is issued)."""
    record = store.get_enrollment_token(token_id)
    if record is None or not hmac.compare_digest(record.secret_sha256, _secret_hash(secret)):
        raise NotAuthenticated("unknown enrollment token or wrong secret")
    if record.protocol != protocol:
        raise NotAuthorized(f"token {token_id} is for {record.protocol}, not {protocol}")
    if record.expires_at <= datetime.now(UTC):
        raise NotAuthenticated(f"token {token_id} expired at {record.expires_at.isoformat()}")
    if record.used_at is not None and record.used_for_serial is None:
        raise NotAuthenticated(f"token {token_id} was already used")
    identities = frozenset(record.identities)
    # a used token is still accepted to deliver again the certificate it was used for (same CSR key)
    return Requester(name=f"token:{token_id}", method="token", allowed_identities=identities,
                     profile=record.profile, token_id=None if record.used_at else token_id,
                     issued_serial=record.used_for_serial if record.used_at else None)


def requester_for_token(store: Store, token_id: str) -> Requester:
    """The requester a token names, for a request already authenticated with its secret (SCEP polling)."""
    record = store.get_enrollment_token(token_id)
    if record is None or record.used_at is not None or record.expires_at <= datetime.now(UTC):
        raise NotAuthenticated(f"token {token_id} is no longer usable")
    identities = frozenset(record.identities)
    return Requester(name=f"token:{token_id}", method="token", allowed_identities=identities,
                     profile=record.profile, token_id=token_id)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _valid_now(cert: x509.Certificate) -> bool:
    now = datetime.now(UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def requester_from_certificate(
    store: Store, settings: Settings, issuer: x509.Certificate, cert: x509.Certificate,
    bootstrap_cas: list[x509.Certificate],
) -> Requester:
    """A client certificate: a current, unrevoked vpnca certificate, or one from a bootstrap CA. With
    `est.reenroll_grace`, a vpnca certificate expired less than that ago too, marked `expired_at`
    (enroll() lets it re-enroll over EST and nothing else)."""
    expired_at = None
    if not _valid_now(cert):
        expired_for = datetime.now(UTC) - cert.not_valid_after_utc
        grace = settings.est.reenroll_grace
        if not (timedelta(0) < expired_for <= grace and _issued_by(cert, issuer)):
            raise NotAuthorized("client certificate is expired or not yet valid")
        expired_at = cert.not_valid_after_utc
    if _issued_by(cert, issuer):
        serial = serial_hex(cert.serial_number)
        record = store.get_certificate(serial)
        if record is None:
            raise NotAuthorized(f"client certificate {serial} is not in the register")
        if record.status != CertStatus.VALID:
            raise NotAuthorized(f"client certificate {serial} is {record.status}"
                                + (f" ({record.revocation_reason})" if record.revocation_reason else ""))
        return Requester(name=f"cert:{serial}", method="client-cert",
                         allowed_identities=frozenset(identities_of_certificate(cert)),
                         profile=record.profile, current=record, expired_at=expired_at)
    for bootstrap in bootstrap_cas:
        if _issued_by(cert, bootstrap) and _valid_now(bootstrap):
            return Requester(name=f"bootstrap:{bootstrap.subject.rfc4514_string()}:{cert.serial_number:x}",
                             method="bootstrap-cert",
                             allowed_identities=frozenset(identities_of_certificate(cert)),
                             profile=settings.est.bootstrap_profile)
    raise NotAuthorized("client certificate is not from this CA or a configured bootstrap CA")


__all__ = ["NewToken", "Requester", "check_token", "create_token", "requester_for_token",
           "requester_from_certificate"]
