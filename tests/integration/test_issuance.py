"""Issuance through the token: chains openssl accepts, profiles exactly as the policy says."""

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from tests.conftest import CaHome
from tests.helpers import openssl_csr, require_tool, run
from vpnca.authority import IssueRequest, request_from_csr
from vpnca.identities import IkeIdentity
from vpnca.lint import LintFailed
from vpnca.profiles import ID_KP_IPSEC_IKE, IKE_INTERMEDIATE
from vpnca.store import CertStatus, Store
from vpnca.x509util import to_pem


def issue_from_openssl(ca: CaHome, tmp_path: Path, profile: str, sans: list[str], subject: str = "/CN=x",
                       algorithm: str = "ec-p256") -> x509.Certificate:
    csr = openssl_csr(tmp_path, subject=subject, sans=sans, algorithm=algorithm)
    request = request_from_csr(csr.read_bytes(), profile=profile, requester="test", protocol="test")
    return ca.authority.issue(request).certificate


def openssl_verify(ca: CaHome, cert: x509.Certificate, tmp_path: Path) -> str:
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(to_pem(cert))
    return run([require_tool("openssl"), "verify", "-CAfile", str(ca.home / "ca/root.pem"),
                "-untrusted", str(ca.home / "ca/sub.pem"), str(leaf)]).stdout


def test_chain_verifies_with_openssl_while_the_sub_ca_key_is_on_the_token(ca_home: CaHome,
                                                                          tmp_path: Path) -> None:
    cert = issue_from_openssl(ca_home, tmp_path, "gateway", ["DNS:vpn.example.com"])
    assert "leaf.pem: OK" in openssl_verify(ca_home, cert, tmp_path)
    # the sub-CA private key is a token key object: there is no software copy to sign with
    assert type(ca_home.authority.key).__name__ == "TokenEcPrivateKey"


def test_gateway_profile_is_exact(ca_home: CaHome, tmp_path: Path) -> None:
    cert = issue_from_openssl(ca_home, tmp_path, "gateway", ["DNS:vpn.example.com", "IP:10.0.0.1"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    assert len(list(san)) == 2
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                               ID_KP_IPSEC_IKE, IKE_INTERMEDIATE]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert not ku.value.key_cert_sign and not ku.value.content_commitment
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == ca_home.settings.crl_url
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(d.access_method, d.access_location.value) for d in aia} == {
        (AuthorityInformationAccessOID.OCSP, ca_home.settings.ocsp_url),
        (AuthorityInformationAccessOID.CA_ISSUERS, ca_home.settings.ca_issuers_url),
    }
    assert cert.serial_number.bit_length() >= 64
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 29 < lifetime.days <= 30

    text = run([require_tool("openssl"), "x509", "-noout", "-text"], input_=to_pem(cert)).stdout
    assert ("TLS Web Server Authentication, TLS Web Client Authentication, ipsec Internet Key Exchange, "
            "1.3.6.1.5.5.8.2.2") in text
    assert "DNS:vpn.example.com, IP Address:10.0.0.1" in text
    assert "Digital Signature" in text and "Key Encipherment" not in text


def test_device_profile_is_exact_and_rsa_gets_key_encipherment(ca_home: CaHome, tmp_path: Path) -> None:
    cert = issue_from_openssl(ca_home, tmp_path, "device", ["email:alice@example.com"], algorithm="rsa-3072")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.RFC822Name("alice@example.com")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_IPSEC_IKE]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 6 < lifetime.days <= 7
    text = run([require_tool("openssl"), "x509", "-noout", "-text"], input_=to_pem(cert)).stdout
    assert "TLS Web Client Authentication, ipsec Internet Key Exchange" in text
    assert "1.3.6.1.5.5.8.2.2" not in text and "TLS Web Server Authentication" not in text
    assert "email:alice@example.com" in text
    assert "Digital Signature, Key Encipherment" in text


def test_dn_identity_becomes_the_subject(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/O=Example/CN=laptop-17")
    request = request_from_csr(csr.read_bytes(), profile="device", requester="t", protocol="t")
    assert request.identities == (IkeIdentity("dn", "CN=laptop-17,O=Example"),)
    cert = ca_home.authority.issue(request).certificate
    assert cert.subject.rfc4514_string() == "CN=laptop-17,O=Example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DirectoryName(cert.subject)]  # strict verifiers want a SAN in every leaf
    assert "leaf.pem: OK" in openssl_verify(ca_home, cert, tmp_path)
    # and pyca's strict RFC 5280 verifier accepts it as a client certificate
    from cryptography.x509.verification import PolicyBuilder
    from cryptography.x509.verification import Store as TrustStore
    chain = ca_home.hierarchy
    verifier = PolicyBuilder().store(TrustStore([chain.root])).build_client_verifier()
    verifier.verify(cert, [chain.sub])


def test_a_certificate_that_would_break_rfc_5280_is_refused_before_signing(ca_home: CaHome) -> None:
    """pkilint lints a copy signed with a throwaway key first; a dNSName with a 70-character label
    (over the 63 of RFC 1034, which RFC 5280 4.2.1.6 requires) gets past the name policy but not the
    linter."""
    key = ec.generate_private_key(ec.SECP256R1())
    bad = IssueRequest(profile="device", identities=(IkeIdentity("fqdn", "x" * 70 + ".example.com"),),
                       public_key=key.public_key(), requester="t", protocol="t")
    before = ca_home.store.count_by_status().get("valid", 0)
    with pytest.raises(LintFailed, match="pkix"):
        ca_home.authority.issue(bad)
    assert ca_home.store.count_by_status().get("valid", 0) == before
    failed = ca_home.store.list_certificates(status="failed")
    assert failed and "RFC 5280" in (failed[-1].error or "")


def test_the_row_is_committed_before_the_certificate_is_returned(ca_home: CaHome, tmp_path: Path) -> None:
    cert = issue_from_openssl(ca_home, tmp_path, "gateway", ["DNS:gw.example.net"])
    fresh = Store(ca_home.settings.database_url)  # a separate connection sees it
    record = fresh.get_certificate(format(cert.serial_number, "x"))
    fresh.dispose()
    assert record is not None and record.status == CertStatus.VALID
    assert record.der == cert.public_bytes(Encoding.DER)
    assert record.identities == (IkeIdentity("fqdn", "gw.example.net"),)


def test_name_constraints_on_the_sub_ca_when_configured(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_ca_home

    ca = make_ca_home(tmp_path / "nc", softhsm, name_constraints=True)
    nc = ca.hierarchy.sub.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees is not None
    assert x509.DNSName("example.com") in nc.value.permitted_subtrees
    cert = issue_from_openssl(ca, tmp_path, "gateway", ["DNS:vpn.example.com"])
    assert "leaf.pem: OK" in openssl_verify(ca, cert, tmp_path)
    ca.store.dispose()


def test_a_name_too_long_for_a_common_name_lives_in_a_critical_san(ca_home: CaHome, tmp_path: Path) -> None:
    name = ".".join(["a" * 30, "b" * 30, "example.com"])  # 73 characters: more than ub-common-name
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca_home.authority.issue(IssueRequest(profile="device", identities=(IkeIdentity.parse(name),),
                                                public_key=key.public_key(), requester="t")).certificate
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.DNSName) == [name]
    assert "leaf.pem: OK" in openssl_verify(ca_home, cert, tmp_path)
