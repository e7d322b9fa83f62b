"""One narrow door into the core per protocol adapter (as step-ca's `acme.CertificateAuthority` and
`scep.SignAuthority`): an adapter holds only its Protocol, so it cannot reach the store, the token or
the settings past what it needs. `CaDoor` is the one implementation, over the `Authority`."""

from __future__ import annotations

from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from vpnca.authority import Authority, IssuedCertificate
from vpnca.credentials import Requester, check_token, requester_for_token, requester_from_certificate
from vpnca.enroll import Enrollment, enroll, record_transaction
from vpnca.errors import token_errors
from vpnca.identities import IkeIdentity
from vpnca.profiles import Profile, get_profile
from vpnca.revocation import Publisher
from vpnca.store import CertificateRecord, PendingRequest
from vpnca.store.acme import AcmeRepository


class EnrollAuthority(Protocol):
    """What an enrollment protocol needs: who asks, enroll, and the chain it hands out."""

    @property
    def issuer(self) -> x509.Certificate:
        """The issuing sub-CA's certificate."""

    def chain(self) -> list[x509.Certificate]:
        """The sub-CA certificate, then the root's (when the register has it)."""

    def token_requester(self, token_id: str, secret: str, *, protocol: str) -> Requester: ...

    def certificate_requester(self, certificate: x509.Certificate,
                              bootstrap_cas: list[x509.Certificate]) -> Requester: ...

    def enroll(self, requester: Requester, enrollment: Enrollment) -> IssuedCertificate: ...

    def profile(self, name: str) -> Profile:
        """The profile `name` (BadRequest if there is none)."""


class EstAuthority(EnrollAuthority, Protocol):
    """EST (RFC 7030) needs no more than enrollment."""


class ScepAuthority(EnrollAuthority, Protocol):
    """SCEP (RFC 8894) also polls pending requests and answers GetCert and GetCRL."""

    def certificate(self, serial: str) -> x509.Certificate | None: ...

    def latest_crl(self) -> bytes | None: ...

    def polling_requester(self, token_id: str) -> Requester: ...

    def pending_by_transaction(self, transaction_id: str) -> PendingRequest | None: ...

    def record_transaction(self, transaction_id: str, requester: str, profile: str,
                           csr: x509.CertificateSigningRequest, issued: IssuedCertificate) -> None: ...


class AcmeAuthority(Protocol):
    """ACME (RFC 8555) keeps its own state (accounts, orders) and revokes as well as enrolls."""

    @property
    def issuer(self) -> x509.Certificate: ...

    def chain(self) -> list[x509.Certificate]: ...

    def acme_store(self) -> AcmeRepository: ...

    def record(self, serial: str) -> CertificateRecord | None: ...

    def may_request(self, requester: Requester, profile: str, identities: tuple[IkeIdentity, ...]) -> None:
        """The policy on an order's identifiers, before any CSR (raises as `enroll` would)."""

    def enroll(self, requester: Requester, enrollment: Enrollment) -> IssuedCertificate: ...

    def revoke(self, serial: str, reason: str, *, actor: str) -> None:
        """Record the revocation, then publish it (OCSP re-signed, CRL)."""


class CaDoor:
    """Every protocol's door, over one Authority (and the Publisher that revocations go through)."""

    def __init__(self, authority: Authority, publisher: Publisher | None = None) -> None:
        self._authority = authority
        self._store = authority.store
        self._settings = authority.settings
        self._publisher = publisher

    @property
    def issuer(self) -> x509.Certificate:
        return self._authority.certificate

    def chain(self) -> list[x509.Certificate]:
        return self._authority.chain()

    def token_requester(self, token_id: str, secret: str, *, protocol: str) -> Requester:
        return check_token(self._store, token_id, secret, protocol=protocol)

    def certificate_requester(self, certificate: x509.Certificate,
                              bootstrap_cas: list[x509.Certificate]) -> Requester:
        return requester_from_certificate(self._store, self._settings, self._authority.certificate,
                                          certificate, bootstrap_cas)

    def polling_requester(self, token_id: str) -> Requester:
        return requester_for_token(self._store, token_id)

    def enroll(self, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
        return enroll(self._authority, requester, enrollment)

    def profile(self, name: str) -> Profile:
        return get_profile(self._settings, name)

    def certificate(self, serial: str) -> x509.Certificate | None:
        record = self._store.get_certificate(serial)
        return x509.load_der_x509_certificate(record.der) if record is not None and record.der else None

    def record(self, serial: str) -> CertificateRecord | None:
        return self._store.get_certificate(serial)

    def latest_crl(self) -> bytes | None:
        crl = self._store.latest_crl(self._settings.ca.name)
        return crl.der if crl is not None else None

    def pending_by_transaction(self, transaction_id: str) -> PendingRequest | None:
        return self._store.pending_by_transaction(transaction_id)

    def record_transaction(self, transaction_id: str, requester: str, profile: str,
                           csr: x509.CertificateSigningRequest, issued: IssuedCertificate) -> None:
        record_transaction(self._authority, transaction_id, requester, profile, csr, issued)

    def acme_store(self) -> AcmeRepository:
        return AcmeRepository(self._store)

    def may_request(self, requester: Requester, profile: str, identities: tuple[IkeIdentity, ...]) -> None:
        self._authority.check_names(profile, identities, requester.allowed_identities, requester.name)

    def revoke(self, serial: str, reason: str, *, actor: str) -> None:
        self._authority.revoke(serial, reason, actor=actor)
        if self._publisher is not None:
            with token_errors():
                self._publisher.publish_revocation(serial, actor)


class GuardedRsaKey(rsa.RSAPrivateKey):
    """A token RSA key (the SCEP RA's) whose token errors are SigningUnavailable, as the core's are."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        with token_errors():
            return self._key.decrypt(ciphertext, padding_)

    def sign(self, data: bytes, padding_: padding.AsymmetricPadding,
             algorithm: hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo) -> bytes:
        with token_errors():
            return self._key.sign(data, padding_, algorithm)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise TypeError("a token key does not leave the token")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise TypeError("a token key does not leave the token")

    def __copy__(self) -> GuardedRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> GuardedRsaKey:
        return self


__all__ = ["AcmeAuthority", "CaDoor", "EnrollAuthority", "EstAuthority", "GuardedRsaKey", "ScepAuthority"]
