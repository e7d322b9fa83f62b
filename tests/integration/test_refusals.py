"""Bad requests are refused with a clear error and leave no row behind."""

from pathlib import Path

import pytest

from tests.conftest import CaHome
from tests.helpers import openssl_csr, require_tool
from vpnca.authority import IssueRequest, request_from_csr
from vpnca.errors import BadRequest, NotAuthorized, PolicyViolation, VpncaError
from vpnca.identities import IkeIdentity


def assert_refused(ca: CaHome, csr_data: bytes, error: type[VpncaError], match: str) -> None:
    before = ca.store.count_by_status()
    with pytest.raises(error, match=match):
        request = request_from_csr(csr_data, profile="device", requester="t", protocol="t")
        ca.authority.issue(request)
    assert ca.store.count_by_status() == before


def test_rsa_1024_csr_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=dev.example.com", algorithm="rsa-1024")
    assert_refused(ca_home, csr.read_bytes(), PolicyViolation, "1024 bits")


def test_sha1_signed_csr_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=dev.example.com", algorithm="rsa-2048", digest="sha1")
    assert_refused(ca_home, csr.read_bytes(), PolicyViolation, "SHA1")


def test_csr_whose_signature_does_not_verify_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=dev.example.com")
    der = bytearray(_to_der(csr))
    der[-5] ^= 0x01  # inside the signature value
    assert_refused(ca_home, bytes(der), BadRequest, "does not verify|malformed")


def _to_der(csr: Path) -> bytes:
    import subprocess

    return subprocess.run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER"],
                          capture_output=True, check=True).stdout


def test_name_outside_allowed_domains_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=vpn.example.org", sans=["DNS:vpn.example.org"])
    assert_refused(ca_home, csr.read_bytes(), PolicyViolation, "outside the allowed domains")


def test_ip_outside_allowed_ranges_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=x", sans=["IP:172.16.0.1"])
    assert_refused(ca_home, csr.read_bytes(), PolicyViolation, "outside the allowed ranges")


def test_wildcard_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=x", sans=["DNS:*.example.com"])
    assert_refused(ca_home, csr.read_bytes(), BadRequest, "wildcard")


@pytest.mark.parametrize("garbage", [b"", b"\x30\x03\x02\x01", b"not a csr at all", b"\x00" * 70000])
def test_garbage_csr_is_refused(ca_home: CaHome, garbage: bytes) -> None:
    assert_refused(ca_home, garbage, BadRequest, "malformed|larger")


def test_identity_outside_the_requesters_binding_is_refused(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=b.example.com")
    request = request_from_csr(csr.read_bytes(), profile="device", requester="token-for-a", protocol="t",
                               allowed_identities=frozenset({IkeIdentity.parse("a.example.com")}))
    before = ca_home.store.count_by_status()
    with pytest.raises(NotAuthorized, match=r"b\.example\.com"):
        ca_home.authority.issue(request)
    assert ca_home.store.count_by_status() == before


def test_unknown_profile_is_refused(ca_home: CaHome) -> None:
    key = ca_home.authority.key.public_key()
    with pytest.raises(BadRequest, match="unknown profile"):
        ca_home.authority.issue(IssueRequest(profile="root", identities=(IkeIdentity.parse("x.example.com"),),
                                             public_key=key, requester="t"))
