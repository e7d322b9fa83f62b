import ipaddress

import pytest
from cryptography import x509

from vpnca.errors import BadRequest
from vpnca.identities import IkeIdentity, subject_for


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("vpn.example.com", "fqdn", "vpn.example.com"),
        ("VPN.Example.COM.", "fqdn", "vpn.example.com"),
        ("10.1.2.3", "ip", "10.1.2.3"),
        ("2001:db8::1", "ip", "2001:db8::1"),
        ("alice@example.com", "email", "alice@example.com"),
        ("CN=alice,O=Example", "dn", "CN=alice,O=Example"),
    ],
)
def test_identity_kinds_are_recognised(text: str, kind: str, value: str) -> None:
    identity = IkeIdentity.parse(text)
    assert (identity.kind, identity.value) == (kind, value)


@pytest.mark.parametrize("text", ["*.example.com", "bad_name.example.com", "nodot", "", "-x.example.com",
                                  "CN", "@example.com"])
def test_malformed_or_wildcard_identities_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        IkeIdentity.parse(text)


def test_identities_map_to_their_subject_alt_name_types() -> None:
    assert IkeIdentity.parse("vpn.example.com").general_name() == x509.DNSName("vpn.example.com")
    assert IkeIdentity.parse("10.0.0.1").general_name() == x509.IPAddress(ipaddress.ip_address("10.0.0.1"))
    assert IkeIdentity.parse("a@example.com").general_name() == x509.RFC822Name("a@example.com")


def test_subject_is_the_dn_identity_or_cn_of_the_first() -> None:
    fqdn = IkeIdentity.parse("vpn.example.com")
    dn = IkeIdentity.parse("CN=gw,O=Example")
    assert subject_for((fqdn,)).rfc4514_string() == "CN=vpn.example.com"
    assert subject_for((fqdn, dn)).rfc4514_string() == "CN=gw,O=Example"
    with pytest.raises(BadRequest):
        subject_for((dn, IkeIdentity.parse("CN=other")))
