"""What every enrollment protocol does once it has parsed its request: authorise, approve, issue."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from enrollment.auth import Requester
from vpnca.authority import Authority, IssuedCertificate, IssueRequest
from vpnca.errors import BadRequest, NotAuthorized, Pending
from vpnca.identities import IkeIdentity, identities_from_csr, identities_of_certificate
from vpnca.policy import check_csr_signature
from vpnca.store import PendingRequest


@dataclass(frozen=True)
class Enrollment:
    csr: x509.CertificateSigningRequest
    profile: str
    protocol: str
    renewal: bool = False
    server_public_key: CertificatePublicKeyTypes | None = None  # serverkeygen: the key vpnca made
    client: str | None = None  # the requester's network address, for the record
    transaction_id: str | None = None  # SCEP: how the client polls a pending request


def enroll(authority: Authority, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
    """Check the CSR, bind it to the requester, wait for approval if the profile wants it, issue."""
    csr = enrollment.csr
    check_csr_signature(csr)
    if requester.profile is not None and requester.method == "token" and requester.profile != enrollment.profile:
        raise NotAuthorized(f"this credential is for profile {requester.profile}, not {enrollment.profile}")
    identities: tuple[IkeIdentity, ...]
    if enrollment.renewal:
        current = requester.current
        if current is None or current.der is None:
            raise NotAuthorized("re-enrollment needs the TLS client certificate of a current vpnca certificate")
        old = x509.load_der_x509_certificate(current.der)
        identities = identities_of_certificate(old)
        asked = set(identities_from_csr(csr))
        if csr.subject != old.subject and not asked <= set(identities):
            raise BadRequest("re-enrollment must keep the subject and subjectAltName of the current certificate")
        profile = current.profile
    else:
        identities = identities_from_csr(csr)
        profile = enrollment.profile
    request = IssueRequest(
        profile=profile, identities=identities,
        public_key=enrollment.server_public_key or csr.public_key(),
        requester=requester.name, protocol=enrollment.protocol,
        allowed_identities=requester.allowed_identities,
        details={"auth": requester.method, **({"client": enrollment.client} if enrollment.client else {}),
                 **({"renews": requester.current.serial}
                                               if enrollment.renewal and requester.current else {})},
        spend_token=requester.token_id,
    )
    authority.check(request)
    if authority.settings.profiles[profile].approval and not enrollment.renewal:
        _await_approval(authority, request, csr, enrollment.transaction_id)
    issued = authority.issue(request)
    if authority.settings.profiles[profile].approval and not enrollment.renewal:
        authority.store.mark_pending_issued(_request_id(csr), issued.serial)
    return issued


def _request_id(csr: x509.CertificateSigningRequest) -> str:
    return hashlib.sha256(csr.public_bytes(Encoding.DER)).hexdigest()


def _await_approval(authority: Authority, request: IssueRequest, csr: x509.CertificateSigningRequest,
                    transaction_id: str | None) -> None:
    """File the request, or raise Pending until an operator approves it (the client polls)."""
    store = authority.store
    request_id = _request_id(csr)
    pending = store.pending_request(request_id) or store.add_pending_request(PendingRequest(
        request_id=request_id, profile=request.profile,
        identities=json.dumps([[i.kind, i.value] for i in request.identities]),
        requester=request.requester, protocol=request.protocol, status="pending", created_at=datetime.now(UTC),
        csr_der=csr.public_bytes(Encoding.DER), transaction_id=transaction_id,
    ))
    if pending.status == "rejected":
        raise NotAuthorized(f"request {request_id} was rejected by {pending.decided_by}")
    if pending.status == "issued":
        raise NotAuthorized(f"request {request_id} was already issued (serial {pending.serial})")
    if pending.status != "approved":
        raise Pending(request_id, authority.settings.est.retry_after_seconds)
