import ipaddress

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from vpnca.config import PolicySettings
from vpnca.errors import PolicyViolation
from vpnca.identities import IkeIdentity
from vpnca.policy import check_identities, check_public_key

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
