"""The one enrollment path of the core, for EST, SCEP and ACME alike: CSR checks, the
credential's profile binding, renewal binding, operator approval, re-delivery; then one policy check
and the issuance."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.authority import Authority, IssuedCertificate, IssueRequest
from vpnca.credentials import Requester
from vpnca.errors import (
    ApprovalRequired,
    BadRequest,
    NotAuthenticated,
    NotAuthorized,
    Pending,
    StoreUnavailable,
    VpncaError,
)
from vpnca.events import emit
from vpnca.identities import IkeIdentity, identities_from_csr, identities_of_certificate
from vpnca.policy import check_csr
from vpnca.refusals import record_refusal
from vpnca.store import CertStatus, PendingRequest


@dataclass(frozen=True)
class Enrollment:
    csr: x509.CertificateSigningRequest
    profile: str
    protocol: str
    renewal: bool = False
    server_public_key: CertificatePublicKeyTypes | None = None  # serverkeygen: the key vpnca made
    client: str | None = None  # the requester's network address, for the record
    transaction_id: str | None = None  # SCEP: how the client polls a pending request
    can_wait: bool = True  # the protocol can say "pending" (ACME cannot: approval needs an EAB there)
    details: tuple[tuple[str, str], ...] = ()  # what the protocol adds to the audit record
    renews: str | None = None  # the serial a renewal replaces, when the protocol names it (ACME)
    on_checked: Callable[[], None] | None = None  # runs after the policy accepted, before signing
    identities: tuple[IkeIdentity, ...] | None = None  # the protocol's (an ACME order's), else the CSR's


def enroll(authority: Authority, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
    """Check the CSR, bind it to the requester, wait for approval if the profile wants it, issue.
    Every refusal is logged and counted once, here or in the authority; an authentication failure (a
    spent or expired credential) is left to the protocol's edge, which logs it as one."""
    try:
        return _enroll(authority, requester, enrollment)
    except VpncaError as exc:
        if not isinstance(exc, Pending | NotAuthenticated):
            record_refusal(exc, protocol=enrollment.protocol, profile=enrollment.profile,
                           requester=requester.name, client=enrollment.client)
        raise


def _enroll(authority: Authority, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
    csr = enrollment.csr
    check_csr(csr)
    _check_profile_binding(requester, enrollment)
    grace_renewal = _check_expired_within_grace(authority, requester, enrollment)
    if requester.issued_serial is not None:
        return _deliver_again(authority, requester, enrollment)
    identities: tuple[IkeIdentity, ...]
    if enrollment.renewal:
        current = requester.current
        if current is None or current.der is None:
            raise NotAuthorized("re-enrollment needs the TLS client certificate of a current vpnca "
                                "certificate")
        old = x509.load_der_x509_certificate(current.der)
        identities = identities_of_certificate(old)
        asked = set(identities_from_csr(csr))
        if csr.subject != old.subject and not asked <= set(identities):
            raise BadRequest("re-enrollment must keep the subject and subjectAltName of the current "
                             "certificate")
        profile = current.profile
    else:
        identities = enrollment.identities or identities_from_csr(csr)
        profile = enrollment.profile
    request = IssueRequest(
        profile=profile, identities=identities,
        public_key=enrollment.server_public_key or csr.public_key(),
        requester=requester.name, protocol=enrollment.protocol,
        allowed_identities=requester.allowed_identities,
        details={"auth": requester.method, **({"client": enrollment.client} if enrollment.client else {}),
                 **({"renewal_after_expiry": "within grace", "expired_at": requester.expired_at.isoformat()}
                    if grace_renewal and requester.expired_at else {}),
                 **({"renews": requester.current.serial}
                                               if enrollment.renewal and requester.current else {}),
                 **({"renews": enrollment.renews} if enrollment.renews else {}),
                 **dict(enrollment.details)},
        spend_token=requester.token_id,
    )
    checked = authority.check(request)  # the one policy check
    approval = _needs_approval(authority, requester, enrollment, profile)
    if approval:  # filed for an operator, or approved by one
        _await_approval(authority, request, csr, enrollment.transaction_id)
    if enrollment.on_checked is not None:
        enrollment.on_checked()
    issued = authority.issue(checked)
    if approval:
        authority.store.mark_pending_issued(_request_id(csr), issued.serial)
    return issued


def _needs_approval(authority: Authority, requester: Requester, enrollment: Enrollment, profile: str) -> bool:
    """Whether an operator must approve this request first: the profile says so, it is no renewal, and
    the credential is not one an operator bound to the request already (an ACME EAB)."""
    if not authority.settings.profiles[profile].approval or enrollment.renewal or requester.preapproved:
        return False
    if not enrollment.can_wait:
        raise ApprovalRequired(f"profile {profile} needs operator approval, which {enrollment.protocol} "
                            "cannot wait for: use a credential an operator made for it")
    return True


def _deliver_again(authority: Authority, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
    """The token was used for a certificate the client may never have received (a crash after the
    commit, a lost connection): the same token with a CSR for the same key gets the same certificate."""
    serial = requester.issued_serial
    record = authority.store.get_certificate(serial) if serial else None
    if (record is None or record.der is None or record.status != CertStatus.VALID
            or enrollment.server_public_key is not None):
        raise NotAuthenticated(f"{requester.name} was already used")
    certificate = x509.load_der_x509_certificate(record.der)
    if certificate.public_key() != enrollment.csr.public_key():
        raise NotAuthenticated(f"{requester.name} was already used")
    emit("certificate.delivered_again", requester=requester.name, protocol=enrollment.protocol,
         serial=record.serial, profile=record.profile, client=enrollment.client)
    return IssuedCertificate(certificate=certificate, serial=record.serial)


def _check_expired_within_grace(authority: Authority, requester: Requester, enrollment: Enrollment) -> bool:
    """A certificate expired less than est.reenroll_grace ago may re-enroll over EST (a device that was
    offline past its expiry, `vpnca agent`), and do nothing else. Said as an event when it does."""
    if requester.expired_at is None:
        return False
    if not (enrollment.renewal and enrollment.protocol == "est"):
        raise NotAuthorized("client certificate is expired or not yet valid")
    emit("enrollment.renewal_after_expiry", logging.WARNING, requester=requester.name, protocol="est",
         expired_at=requester.expired_at.isoformat(), client=enrollment.client,
         grace=str(authority.settings.est.reenroll_grace), detail="renewal after expiry within grace")
    return True


def _check_profile_binding(requester: Requester, enrollment: Enrollment) -> None:
    """A credential gets only the profile it is bound to: a token its own, a vpnca certificate the
    profile it was issued under (and so no device certificate mints a gateway one), a bootstrap
    certificate the profile configured for bootstrap CAs. Re-enrollment keeps the current profile."""
    if enrollment.renewal:
        return
    if requester.profile is None:
        raise NotAuthorized(f"{requester.name} is not bound to a profile and may not enroll")
    if requester.profile != enrollment.profile:
        raise NotAuthorized(f"this credential is for profile {requester.profile}, not {enrollment.profile}")


def _request_id(csr: x509.CertificateSigningRequest) -> str:
    return hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest()


def _await_approval(authority: Authority, request: IssueRequest, csr: x509.CertificateSigningRequest,
                    transaction_id: str | None) -> None:
    """File the request, or raise Pending until an operator approves it (the client polls)."""
    store = authority.store
    request_id = _request_id(csr)
    pending = store.pending_request(request_id) or store.add_pending_request(PendingRequest(
        request_id=request_id, profile=request.profile,
        identities=request.identities,
        requester=request.requester, protocol=request.protocol, status="pending",
        created_at=datetime.now(UTC),
        csr_der=csr.public_bytes(Encoding.DER), transaction_id=transaction_id,
    ))
    if pending.profile != request.profile or pending.requester != request.requester:
        raise NotAuthorized(f"request {request_id} was filed by another credential or for another profile")
    if pending.status == "rejected":
        raise NotAuthorized(f"request {request_id} was rejected by {pending.decided_by}")
    if pending.status == "issued":
        raise NotAuthorized(f"request {request_id} was already issued (serial {pending.serial})")
    if pending.status != "approved":
        raise Pending(request_id, authority.settings.est.retry_after_seconds)


def record_transaction(authority: Authority, transaction_id: str, requester: str, profile: str,
                       csr: x509.CertificateSigningRequest, issued: IssuedCertificate) -> None:
    """Remember which certificate a SCEP transaction was issued, so that a CertPoll for it (a client that
    lost the CertRep) finds it as it finds an approved one: a pending_requests row, status issued."""
    store = authority.store
    try:
        if store.pending_by_transaction(transaction_id) is not None:
            return  # the PKCSReq was sent again and delivered again
        identities = identities_of_certificate(issued.certificate)
        csr_der = csr.public_bytes(Encoding.DER)
        store.add_pending_request(PendingRequest(
            request_id=hashlib.sha256(csr_der).hexdigest(), profile=profile,
            identities=identities, requester=requester,
            protocol="scep", status="issued", created_at=datetime.now(UTC), serial=issued.serial,
            csr_der=csr_der, transaction_id=transaction_id))
    except StoreUnavailable as exc:
        # the certificate is issued: deliver it; only a later CertPoll would miss it
        logging.getLogger("vpnca.scep").warning(
            "SCEP transaction %s (serial %s) not recorded for CertPoll: %s", transaction_id, issued.serial,
            type(exc).__name__)


__all__ = ["Enrollment", "enroll", "record_transaction"]
