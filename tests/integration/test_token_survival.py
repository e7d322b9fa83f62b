"""A token is used up only by a certificate that was issued: failures that are not the client's give
it back, and a certificate that was issued but not delivered is delivered again to the same client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsm import KeySpec
from tests.conftest import CaHome
from vpnca.authority import Authority
from vpnca.credentials import check_token, create_token
from vpnca.enroll import Enrollment, enroll
from vpnca.errors import NotAuthenticated, SigningUnavailable
from vpnca.identities import IkeIdentity
from vpnca.issuer import open_settings_token, token_key
from vpnca.store import CertificateRecord, CertStatus


def _csr(name: str) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))


def _token(ca: CaHome, name: str) -> tuple[str, str]:
    new = create_token(ca.store, identities=(IkeIdentity.parse(name),), profile="device", protocol="est",
                       ttl=timedelta(hours=1), created_by="test")
    return new.token_id, new.secret


def _authority_whose_token_key_is_gone(ca: CaHome) -> Authority:
    """The real token, with a signing key that is destroyed on it: every signature fails in PKCS#11."""
    token = open_settings_token(ca.settings)  # the process's session on the CA's token
    label = f"doomed-{uuid.uuid4().hex[:8]}"
    token.generate(KeySpec(label, "ec-p384"))
    key = token_key(token, label)
    token.call(token.private_key(label).destroy)
    return Authority(ca.settings, ca.store, ca.authority.certificate, key)


def test_token_survives_a_token_failure_and_is_spent_by_the_issued_certificate(ca_home: CaHome) -> None:
    token_id, secret = _token(ca_home, "laptop.example.com")
    csr = _csr("laptop.example.com")
    enrollment = Enrollment(csr=csr, profile="device", protocol="est")
    with pytest.raises(SigningUnavailable):  # the token's error, as the core's taxonomy says it
        enroll(_authority_whose_token_key_is_gone(ca_home), check_token(ca_home.store, token_id, secret,
                                                                        protocol="est"), enrollment)
    failed = ca_home.store.list_certificates(status=CertStatus.FAILED.value)
    assert len(failed) == 1 and failed[0].error
    assert any(e.action == "issue-failed" and e.details and token_id in e.details
               for e in ca_home.store.audit_entries())

    requester = check_token(ca_home.store, token_id, secret, protocol="est")  # still usable
    assert requester.token_id == token_id and requester.issued_serial is None
    issued = enroll(ca_home.authority, requester, enrollment)

    # the client lost the answer: the same token and CSR get the same certificate, not a new one
    again = enroll(ca_home.authority, check_token(ca_home.store, token_id, secret, protocol="est"),
                   enrollment)
    assert again.serial == issued.serial and again.der == issued.der
    assert ca_home.store.count_by_status().get("valid") == 1
    other = Enrollment(csr=_csr("laptop.example.com"), profile="device", protocol="est")
    with pytest.raises(NotAuthenticated, match="already used"):
        enroll(ca_home.authority, check_token(ca_home.store, token_id, secret, protocol="est"), other)


def test_a_reservation_cut_off_by_a_crash_is_resolved_and_gives_the_token_back(ca_home: CaHome) -> None:
    token_id, secret = _token(ca_home, "phone.example.com")
    now = datetime.now(UTC)
    stuck = CertificateRecord(serial="7f" + uuid.uuid4().hex[:30], issuer=ca_home.settings.ca.name,
                              profile="device", subject="CN=phone.example.com",
                              identities=(IkeIdentity("fqdn", "phone.example.com"),),
                              status=CertStatus.ISSUING,
                              not_before=now, not_after=now + timedelta(days=7),
                              requester=f"token:{token_id}", protocol="est", created_at=now)
    ca_home.store.reserve_serial(stuck, spend_token=token_id)  # then the process died before signing
    with pytest.raises(NotAuthenticated):
        enroll(ca_home.authority, check_token(ca_home.store, token_id, secret, protocol="est"),
               Enrollment(csr=_csr("phone.example.com"), profile="device", protocol="est"))

    assert ca_home.store.resolve_interrupted(datetime.now(UTC) + timedelta(seconds=1), "vpnca-serve") \
        == [stuck.serial]
    record = ca_home.store.get_certificate(stuck.serial)
    assert record is not None and record.status == CertStatus.FAILED and "interrupted" in (record.error or "")
    issued = enroll(ca_home.authority, check_token(ca_home.store, token_id, secret, protocol="est"),
                    Enrollment(csr=_csr("phone.example.com"), profile="device", protocol="est"))
    assert issued.serial != stuck.serial  # the interrupted serial is never reused
