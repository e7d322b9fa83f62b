import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from vpnca.config import PolicySettings
from vpnca.errors import PolicyViolation
from vpnca.identities import IkeIdentity
from vpnca.policy import check_csr, check_identities, check_public_key

POLICY = PolicySettings(
    allowed_domains=("example.com",),
    allowed_ip_ranges=(ipaddress.ip_network("10.0.0.0/8"),),
)


@pytest.mark.parametrize("name", ["example.com", "vpn.example.com", "a.b.example.com", "10.9.9.9",
                                  "ops@example.com", "CN=device 1"])
def test_names_inside_the_policy_are_accepted(name: str) -> None:
    check_identities((IkeIdentity.parse(name),), POLICY)


@pytest.mark.parametrize("name", ["vpn.example.org", "badexample.com", "192.168.1.1", "ops@example.org"])
def test_names_outside_the_policy_are_refused(name: str) -> None:
    with pytest.raises(PolicyViolation):
        check_identities((IkeIdentity.parse(name),), POLICY)


def test_dn_identities_can_be_disallowed() -> None:
    with pytest.raises(PolicyViolation):
        check_identities((IkeIdentity.parse("CN=x"),), PolicySettings(allow_dn_identities=False))


def test_key_policy() -> None:
    check_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    check_public_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    check_public_key(rsa.generate_private_key(65537, 2048).public_key())
    with pytest.raises(PolicyViolation, match="1024"):
        check_public_key(rsa.generate_private_key(65537, 1024).public_key())
    with pytest.raises(PolicyViolation):
        check_public_key(ec.generate_private_key(ec.SECP521R1()).public_key())
    with pytest.raises(PolicyViolation):
        check_public_key(dsa.generate_private_key(2048).public_key())
    with pytest.raises(PolicyViolation):
        check_public_key(ed25519.Ed25519PrivateKey.generate().public_key())
    check_public_key(ed25519.Ed25519PrivateKey.generate().public_key(), allow_ed25519=True)


def test_rsa_keys_larger_than_the_cap_are_refused() -> None:
    huge = rsa.RSAPublicNumbers(e=65537, n=(1 << 16383) | 1).public_key()  # 16,384 bits
    with pytest.raises(PolicyViolation, match="maximum 8192"):
        check_public_key(huge)


def _csr_with(extension: x509.ExtensionType, critical: bool) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpn.example.com")]))
            .add_extension(extension, critical=critical).sign(key, hashes.SHA256()))


def test_csr_asking_for_a_ca_certificate_is_refused_with_the_reason() -> None:
    with pytest.raises(PolicyViolation, match="CA:TRUE"):
        check_csr(_csr_with(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    check_csr(_csr_with(x509.BasicConstraints(ca=False, path_length=None), critical=True))


def test_csr_with_an_unknown_critical_extension_is_refused() -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    with pytest.raises(PolicyViolation, match=r"1\.3\.6\.1\.4\.1\.99999\.1"):
        check_csr(_csr_with(unknown, critical=True))
    check_csr(_csr_with(unknown, critical=False))  # a non-critical one may be ignored (RFC 5280 4.2)
