"""The one issuance core: every front end builds an IssueRequest and calls `Authority.issue`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from hsm.errors import HsmError
from vpnca import metrics
from vpnca.clock import SYSTEM_CLOCK, Clock
from vpnca.config import Settings
from vpnca.crlshards import leaf_crl_extensions, shard_for
from vpnca.errors import BadRequest, NotAuthorized, PolicyViolation, SigningUnavailable, VpncaError
from vpnca.events import emit
from vpnca.identities import IkeIdentity, identities_from_csr, subject_for
from vpnca.issuer import (
    BACKDATE,
    REVOCATION_REASONS,
    CaKey,
    hash_for,
    load_ca_certificate,
    open_settings_token,
    token_key,
)
from vpnca.leaf import LeafSpec, build_leaf
from vpnca.lint import LintFailed, lint_before_signing
from vpnca.policy import check_csr, check_identities, check_public_key
from vpnca.profiles import Profile, get_profile
from vpnca.refusals import record_refusal
from vpnca.store import CertificateRecord, CertStatus, Store
from vpnca.store.repository import SerialCollision
from vpnca.x509util import load_csr, random_serial, serial_hex

log = logging.getLogger("vpnca.authority")


@dataclass(frozen=True)
class IssueRequest:
    """What every way in asks of the core. Proof of possession is checked before it is built."""

    profile: str
    identities: tuple[IkeIdentity, ...]
    public_key: CertificatePublicKeyTypes
    requester: str
    protocol: str = "cli"
    # identities this requester may have (an enrollment token's binding); None: policy alone
    allowed_identities: frozenset[IkeIdentity] | None = None
    lifetime: timedelta | None = None  # shorter than the profile's, never longer
    details: dict[str, str] = field(default_factory=dict)
    spend_token: str | None = None  # a one-time enrollment token, spent atomically with the reservation


@dataclass(frozen=True)
class Checked:
    """A request the policy and its profile accepted (`Authority.check`): `issue` does not check again."""

    request: IssueRequest
    profile: Profile


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    serial: str

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)


def request_from_csr(
    csr_data: bytes | x509.CertificateSigningRequest,
    *,
    profile: str,
    requester: str,
    protocol: str,
    identities: Iterable[IkeIdentity] | None = None,
    allowed_identities: frozenset[IkeIdentity] | None = None,
) -> IssueRequest:
    """Parse a CSR, verify its signature algorithm and proof of possession, and build the request.

    The identities are the given ones, or else those the CSR names.
    """
    csr = csr_data if isinstance(csr_data, x509.CertificateSigningRequest) else load_csr(csr_data)
    check_csr(csr)
    wanted = tuple(identities) if identities is not None else identities_from_csr(csr)
    return IssueRequest(
        profile=profile, identities=wanted, public_key=csr.public_key(), requester=requester,
        protocol=protocol, allowed_identities=allowed_identities,
    )


class Authority:
    """The issuing sub-CA: decides by policy and profile, records, signs through the token."""

    def __init__(self, settings: Settings, store: Store, certificate: x509.Certificate, key: CaKey,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.store = store
        self.certificate = certificate
        self.key = key
        self._chain: list[x509.Certificate] | None = None
        self.clock = clock  # validity periods and revocation times are read from it
        # the same in every leaf: AKI, where the CRL is (CDP), where OCSP and the CA certificate are (AIA)
        self._issuer_extensions: tuple[x509.ExtensionType, ...] = (
            x509.AuthorityKeyIdentifier.from_issuer_public_key(certificate.public_key()),  # type: ignore[arg-type]
            x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(settings.ocsp_url)),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier(settings.ca_issuers_url)),
            ]),
        )  # and the CRL pointers of the leaf's shard: `leaf_crl_extensions` (vpnca/crlshards.py)

    @classmethod
    def open(cls, settings: Settings, store: Store, clock: Clock = SYSTEM_CLOCK) -> Authority:
        certificate, label = load_ca_certificate(store, "sub")
        assert label is not None, "the sub-CA key is always on the token"
        return cls(settings, store, certificate, token_key(open_settings_token(settings), label), clock)

    @property
    def name(self) -> str:
        return self.settings.ca.name

    def chain(self) -> list[x509.Certificate]:
        """The CA chain every protocol and gateway hands out: the sub-CA, then the root when the register
        has it (read once: the root does not change while vpnca runs)."""
        if self._chain is None:
            root = self.store.current_ca("root")
            self._chain = [self.certificate] + ([x509.load_der_x509_certificate(root.der)] if root else [])
        return list(self._chain)

    def check(self, request: IssueRequest) -> Checked:
        """Everything the policy and the profile decide, before anything is written; a refusal is
        logged and counted here, once."""
        try:
            return Checked(request, self._check(request))
        except VpncaError as exc:
            record_refusal(exc, protocol=request.protocol, profile=request.profile,
                           requester=request.requester, identity=[i.value for i in request.identities])
            raise

    def _check(self, request: IssueRequest) -> Profile:
        profile = get_profile(self.settings, request.profile)
        profile.check_protocol(request.protocol)
        check_public_key(request.public_key, allow_ed25519=profile.allows_ed25519)
        profile.check_key_type(request.public_key)
        self.check_names(profile.name, request.identities, request.allowed_identities, request.requester)
        return profile

    def check_names(self, profile: str, identities: tuple[IkeIdentity, ...],
                    allowed: frozenset[IkeIdentity] | None, requester: str) -> None:
        """The identities part of `check`, alone (an ACME order's identifiers, before any CSR)."""
        if not identities:
            raise BadRequest("no identity requested")
        if allowed is not None:
            outside = [i for i in identities if i not in allowed]
            if outside:
                raise NotAuthorized(f"{requester} may not request {', '.join(map(str, outside))}")
        if get_profile(self.settings, profile).server_names_only:  # vpnca's own server: its config's names
            names = {IkeIdentity.parse(n) for n in self.settings.server.tls_names}
            if not set(identities) <= names:
                raise PolicyViolation(f"{profile} certificates carry only the configured server.tls_names")
        else:
            check_identities(identities, self.settings.policy)
        subject_for(identities)  # at most one DN

    def issue(self, request: IssueRequest | Checked) -> IssuedCertificate:
        """Check (unless `check` did), reserve the serial, sign on the token, record the certificate,
        audit; then return."""
        checked = request if isinstance(request, Checked) else self.check(request)
        request, profile = checked.request, checked.profile
        now = self.clock.now()
        lifetime = min(request.lifetime or profile.lifetime, profile.lifetime)
        not_before = now - BACKDATE
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        subject = subject_for(request.identities)
        record = self._reserve(request, subject, not_before, not_after, now)
        try:
            certificate = self._sign(request, profile, int(record.serial, 16), subject, not_before, not_after)
            der = certificate.public_bytes(Encoding.DER)
            self.store.complete_issuance(record.serial, der, request.requester, {
                "serial": record.serial, "profile": profile.name, "subject": record.subject,
                "identities": [i.value for i in request.identities], "protocol": request.protocol,
                "not_after": not_after.isoformat(), **request.details,
            })
        except LintFailed as exc:
            self.store.fail_issuance(record.serial, str(exc), request.requester)
            record_refusal(exc, protocol=request.protocol, profile=request.profile, reason="lint",
                           requester=request.requester, identity=[i.value for i in request.identities],
                           findings=[f"{f.severity} {f.code} {f.path}" for f in exc.findings])
            raise
        except Exception as exc:
            self.store.fail_issuance(record.serial, f"{type(exc).__name__}: {exc}", request.requester)
            log.error("issuance of serial %s failed: %s", record.serial, exc)
            if isinstance(exc, HsmError):
                raise SigningUnavailable(f"signing serial {record.serial}: {type(exc).__name__}") from exc
            raise
        kind = "renewed" if "renews" in request.details else "issued"
        emit(f"certificate.{kind}", requester=request.requester, protocol=request.protocol,
             profile=profile.name, serial=record.serial, identity=[i.value for i in request.identities],
             subject=subject.rfc4514_string(), not_after=not_after.isoformat(),
             client=request.details.get("client"), renews=request.details.get("renews"))
        metrics.issued(request.protocol, profile.name, kind)
        return IssuedCertificate(certificate=certificate, serial=record.serial)

    def _reserve(
        self, request: IssueRequest, subject: x509.Name, not_before: datetime, not_after: datetime,
        now: datetime,
    ) -> CertificateRecord:
        for _ in range(5):
            record = CertificateRecord(
                serial=serial_hex(random_serial()), issuer=self.name, profile=request.profile,
                subject=subject.rfc4514_string(),
                identities=request.identities,
                status=CertStatus.ISSUING, not_before=not_before, not_after=not_after,
                requester=request.requester, protocol=request.protocol, created_at=now,
                crl_shard=shard_for(self.settings.crl, not_after),
            )
            try:
                self.store.reserve_serial(record, spend_token=request.spend_token)
                return record
            except SerialCollision:
                log.warning("serial collision on %s; drawing another", record.serial)
        raise RuntimeError("could not reserve a unique serial")

    def _sign(
        self, request: IssueRequest, profile: Profile, serial: int, subject: x509.Name,
        not_before: datetime, not_after: datetime,
    ) -> x509.Certificate:
        spec = LeafSpec(
            subject=subject, issuer=self.certificate.subject, profile=profile,
            # a DN identity is also a directoryName SAN: strict verifiers want a SAN in every leaf
            sans=tuple(i.general_name() for i in request.identities),
            extensions=(*self._issuer_extensions, *leaf_crl_extensions(self.settings, not_after)),
        )
        # LintFailed: nothing is signed (a profile may accept some codes: the service profile's names come
        # from server.tls_names and may be `localhost`, a single label pkilint's domain syntax refuses)
        lint_before_signing(spec, request.public_key, serial, not_before, not_after, self.key,
                            hash_for(self.key), accepted=profile.lint_accepted)
        return build_leaf(spec, request.public_key, serial, not_before, not_after).sign(
            self.key, hash_for(self.key))

    def revoke(
        self, serial: str, reason: str, *, actor: str, invalidity_date: datetime | None = None
    ) -> CertificateRecord:
        return Register(self.store, self.clock).revoke(serial, reason, actor=actor,
                                                       invalidity_date=invalidity_date)

    def release_hold(self, serial: str, *, actor: str) -> CertificateRecord:
        return Register(self.store).release_hold(serial, actor=actor)


class Register:
    """What changes only the register, and so needs no key: revocation records, holds released."""

    def __init__(self, store: Store, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.clock = clock

    def revoke(
        self, serial: str, reason: str, *, actor: str, invalidity_date: datetime | None = None
    ) -> CertificateRecord:
        if reason not in REVOCATION_REASONS:
            raise BadRequest(f"unknown revocation reason {reason!r} (one of {', '.join(REVOCATION_REASONS)})")
        record = self.store.revoke(
            serial, reason, actor=actor, revoked_at=self.clock.now(), invalidity_date=invalidity_date
        )
        emit("certificate.revoked", requester=actor, serial=serial, reason=reason, profile=record.profile,
             identity=[i.value for i in record.identities],
             invalidity_date=invalidity_date.isoformat() if invalidity_date else None)
        metrics.revoked(reason)
        return record

    def release_hold(self, serial: str, *, actor: str) -> CertificateRecord:
        record = self.store.release_hold(serial, actor=actor)
        emit("certificate.released", requester=actor, serial=serial, profile=record.profile)
        return record


__all__ = ["Authority", "Checked", "IssueRequest", "IssuedCertificate", "Register", "request_from_csr"]
