"""EST (RFC 7030) against a running `vpnca serve`, with curl, openssl and strongSwan's `pki --est`."""

from __future__ import annotations

import base64
import email
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import openssl_csr, remember_secret, require_tool, run
from vpnca.authority import Authority, IssueRequest
from vpnca.clock import FrozenClock
from vpnca.credentials import create_token
from vpnca.identities import IkeIdentity
from vpnca.store import CertificateRecord


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("est") / "home"
    ca = make_ca_home(home, softhsm)
    bootstrap_key = ec.generate_private_key(ec.SECP256R1())
    bootstrap = self_signed_ca(bootstrap_key, "Manufacturer CA")
    (home / "bootstrap-ca.pem").write_bytes(bootstrap.public_bytes(serialization.Encoding.PEM))
    (home / "bootstrap-ca.key").write_bytes(bootstrap_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    config = home / "vpnca.toml"
    config.write_text(config.read_text().replace(
        "[profiles.gateway]\nlifetime_days = 30", "[profiles.gateway]\nlifetime_days = 30\napproval = true")
        + '\n[est]\nbootstrap_ca_files = ["bootstrap-ca.pem"]\ntrusted_proxies = ["127.0.0.1"]\n'
        + "max_body_bytes = 8192\n")
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def self_signed_ca(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def manufacturer_certificate(server: RunningServer, tmp_path: Path, name: str) -> None:
    """An IDevID for `name` from the fixture's bootstrap CA: idevid.pem and idevid.key in tmp_path."""
    home = server.ca.home
    ca_key = serialization.load_pem_private_key((home / "bootstrap-ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((home / "bootstrap-ca.pem").read_bytes())
    device_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    idevid = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
              .issuer_name(ca_cert.subject).public_key(device_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
              .not_valid_after(now + timedelta(days=30))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
              .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (tmp_path / "idevid.pem").write_bytes(idevid.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "idevid.key").write_bytes(device_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def vpnca(server: RunningServer, *args: str) -> str:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=server.ca.env).stdout


def new_token(server: RunningServer, identity: str, *extra: str) -> str:
    credential = vpnca(server, "token", "create", "--id", identity, *extra).strip()
    remember_secret(credential.partition(":")[2])
    return credential


def curl(server: RunningServer, path: str, *args: str, data: Path | None = None) -> tuple[int, bytes, str]:
    """(HTTP status, body, headers) from real curl against the EST server."""
    out = server.ca.home / "curl.out"
    headers = server.ca.home / "curl.headers"
    cmd = [require_tool("curl"), "-sS", "--cacert", str(server.ca.home / "ca/root.pem"), "-o", str(out),
           "-D", str(headers), "-w", "%{http_code}", *args]
    if data is not None:
        cmd += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{data}"]
    result = subprocess.run([*cmd, f"{server.est}/{path}"], capture_output=True, text=True, timeout=60,
                            check=False)
    status = int(result.stdout or 0)
    return status, out.read_bytes() if out.exists() and status else b"", headers.read_text() if status else \
        result.stderr


def refusal_detail(server: RunningServer, body: bytes) -> str:
    """The logged detail of a refusal: the client gets a fixed text and the id of the one log line."""
    found = re.search(rb"\(id ([0-9a-f]+)\)", body)
    assert found is not None, body
    events = [json.loads(line) for line in (server.ca.home / "log/vpnca.jsonl").read_text().splitlines()]
    (event,) = [e for e in events if e.get("error_id") == found.group(1).decode()]
    assert event["detail"].encode() not in body
    return str(event["detail"])


def base64_csr(tmp_path: Path, subject: str, sans: list[str] | None = None, name: str = "req") -> Path:
    csr = openssl_csr(tmp_path, subject=subject, sans=sans, name=name)
    der_path = tmp_path / f"{name}.der"
    run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER", "-out", str(der_path)])
    b64 = tmp_path / f"{name}.b64"
    b64.write_bytes(base64.encodebytes(der_path.read_bytes()))
    return b64


def certs_from_pkcs7(tmp_path: Path, body: bytes, name: str = "issued") -> Path:
    p7 = tmp_path / f"{name}.p7"
    p7.write_bytes(base64.b64decode(body))
    pem = tmp_path / f"{name}.pem"
    run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs",
         "-out", str(pem)])
    return pem


def verify_chain(server: RunningServer, pem: Path) -> None:
    out = run([require_tool("openssl"), "verify", "-CAfile", str(server.ca.home / "ca/root.pem"),
               "-untrusted", str(server.ca.home / "ca/sub.pem"), str(pem)]).stdout
    assert out.strip().endswith(": OK")


def cert_of(pem: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.read_bytes())


def sans_of(cert: x509.Certificate) -> list[str]:
    return [str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.DNSName)]


# -- real clients ---------------------------------------------------------------------------------

def test_cacerts_returns_the_chain_as_base64_pkcs7(server: RunningServer, tmp_path: Path) -> None:
    status, body, headers = curl(server, "cacerts")
    assert status == 200
    assert "application/pkcs7-mime" in headers and "content-transfer-encoding: base64" in headers.lower()
    pem = certs_from_pkcs7(tmp_path, body).read_text()
    assert pem.count("BEGIN CERTIFICATE") == 2
    assert "vpnca Issuing CA" in pem and "vpnca Root CA" in pem


def test_curl_openssl_enroll_then_reenroll_with_the_client_certificate(server: RunningServer,
                                                                        tmp_path: Path) -> None:
    credential = new_token(server, "laptop.example.com")
    csr = base64_csr(tmp_path, "/CN=laptop.example.com", ["DNS:laptop.example.com"])
    status, body, _ = curl(server, "simpleenroll", "-u", credential, data=csr)
    assert status == 200, body
    first = certs_from_pkcs7(tmp_path, body, "first")
    verify_chain(server, first)
    assert sans_of(cert_of(first)) == ["laptop.example.com"]

    renew_csr = base64_csr(tmp_path, "/CN=laptop.example.com", ["DNS:laptop.example.com"], name="renew")
    status, body, _ = curl(server, "simplereenroll", "--cert", str(first), "--key", str(tmp_path / "req.key"),
                           data=renew_csr)
    assert status == 200, body
    second = certs_from_pkcs7(tmp_path, body, "second")
    verify_chain(server, second)
    old, new = cert_of(first), cert_of(second)
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject and sans_of(new) == sans_of(old)
    renewal_csr = run([require_tool("openssl"), "req", "-in", str(tmp_path / "renew.csr")]).stdout
    assert new.public_key() == x509.load_pem_x509_csr(renewal_csr.encode()).public_key()


def test_strongswan_pki_est_enroll_and_reenroll(server: RunningServer, tmp_path: Path) -> None:
    pki = require_tool("pki")
    credential = new_token(server, "phone.example.com")
    url = f"https://localhost:{server.https_port}"
    cas = ["--cacert", str(server.ca.home / "ca/root.pem"), "--cacert", str(server.ca.home / "ca/sub.pem")]
    for name in ("p1", "p2"):
        key = run([pki, "--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"]).stdout
        (tmp_path / f"{name}.key").write_text(key)
        csr = run([pki, "--req", "--in", str(tmp_path / f"{name}.key"), "--type", "priv",
                   "--dn", "CN=phone.example.com", "--san", "phone.example.com", "--outform", "pem"]).stdout
        (tmp_path / f"{name}.csr").write_text(csr)
    enrolled = run([pki, "--est", "--url", url, *cas, "--in", str(tmp_path / "p1.csr"),
                    "--userpass", credential, "--outform", "pem"])
    (tmp_path / "p1.pem").write_text(enrolled.stdout)
    verify_chain(server, tmp_path / "p1.pem")
    renewed = run([pki, "--est", "--url", url, *cas, "--in", str(tmp_path / "p2.csr"),
                   "--cert", str(tmp_path / "p1.pem"), "--key", str(tmp_path / "p1.key"), "--outform", "pem"])
    (tmp_path / "p2.pem").write_text(renewed.stdout)
    verify_chain(server, tmp_path / "p2.pem")
    assert cert_of(tmp_path / "p2.pem").serial_number != cert_of(tmp_path / "p1.pem").serial_number
    assert cert_of(tmp_path / "p2.pem").subject == cert_of(tmp_path / "p1.pem").subject


def test_label_selects_the_profile_and_approval_returns_202(server: RunningServer, tmp_path: Path) -> None:
    credential = new_token(server, "vpn.example.com", "--profile", "gateway")
    csr = base64_csr(tmp_path, "/CN=vpn.example.com", ["DNS:vpn.example.com"])
    status, _, headers = curl(server, "gateway/simpleenroll", "-u", credential, data=csr)
    assert status == 202 and "retry-after: 60" in headers.lower()
    pending = json.loads(vpnca(server, "pending", "--json"))
    request_id = next(p["request_id"] for p in pending if p["identities"] == "vpn.example.com")
    status, _, _ = curl(server, "gateway/simpleenroll", "-u", credential, data=csr)
    assert status == 202  # still waiting
    vpnca(server, "approve", request_id)
    status, body, _ = curl(server, "gateway/simpleenroll", "-u", credential, data=csr)
    assert status == 200
    cert = cert_of(certs_from_pkcs7(tmp_path, body))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2") in list(eku)


def test_csrattrs_names_the_key_the_profile_wants(server: RunningServer, tmp_path: Path) -> None:
    status, body, headers = curl(server, "gateway/csrattrs")
    assert status == 200 and "application/csrattrs" in headers
    der = tmp_path / "attrs.der"
    der.write_bytes(base64.b64decode(body))
    parsed = run([require_tool("openssl"), "asn1parse", "-inform", "DER", "-in", str(der)]).stdout
    assert "ecdsa-with-SHA384" in parsed and "id-ecPublicKey" in parsed and "secp384r1" in parsed


def test_serverkeygen_returns_a_pkcs8_key_and_its_certificate(server: RunningServer, tmp_path: Path) -> None:
    credential = new_token(server, "tablet.example.com")
    csr = base64_csr(tmp_path, "/CN=tablet.example.com")
    status, body, headers = curl(server, "serverkeygen", "-u", credential, data=csr)
    assert status == 200 and "multipart/mixed" in headers
    content_type = next(line.split(":", 1)[1].strip() for line in headers.splitlines()
                        if line.lower().startswith("content-type"))
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    # a part that is not multipart has a str payload (still base64: the transfer encoding is not undone)
    parts = {part.get_content_type(): str(part.get_payload())
             for part in message.walk() if not part.is_multipart()}
    key = serialization.load_der_private_key(base64.b64decode(parts["application/pkcs8"]), None)
    pem = certs_from_pkcs7(tmp_path, parts["application/pkcs7-mime"].encode())
    verify_chain(server, pem)
    assert cert_of(pem).public_key() == key.public_key()
    with server.ca.store.read() as session:  # the key is never stored
        record = session.get(CertificateRecord, format(cert_of(pem).serial_number, "x"))
        assert record is not None and record.der is not None


def test_bootstrap_ca_client_certificate_authenticates_first_enrollment(server: RunningServer,
                                                                        tmp_path: Path) -> None:
    manufacturer_certificate(server, tmp_path, "sensor7.example.com")
    ok = base64_csr(tmp_path, "/CN=sensor7.example.com", ["DNS:sensor7.example.com"], name="ok")
    status, body, _ = curl(server, "simpleenroll", "--cert", str(tmp_path / "idevid.pem"),
                           "--key", str(tmp_path / "idevid.key"), data=ok)
    assert status == 200, body
    other = base64_csr(tmp_path, "/CN=sensor8.example.com", ["DNS:sensor8.example.com"], name="other")
    status, _, _ = curl(server, "simpleenroll", "--cert", str(tmp_path / "idevid.pem"),
                        "--key", str(tmp_path / "idevid.key"), data=other)
    assert status == 403


def test_trusted_proxy_passes_the_client_certificate_in_a_header(server: RunningServer,
                                                                 tmp_path: Path) -> None:
    credential = new_token(server, "kiosk.example.com")
    csr = base64_csr(tmp_path, "/CN=kiosk.example.com", ["DNS:kiosk.example.com"])
    status, body, _ = curl(server, "simpleenroll", "-u", credential, data=csr)
    assert status == 200
    pem = certs_from_pkcs7(tmp_path, body).read_text()
    header = urllib.parse.quote(pem)
    status, body, _ = curl(server, "simplereenroll", "-H", f"X-SSL-Client-Cert: {header}", data=csr)
    assert status == 200, body


# -- refusals ------------------------------------------------------------------------------------

def test_refusals(server: RunningServer, tmp_path: Path) -> None:
    before = server.ca.store.count_by_status()
    a_csr = base64_csr(tmp_path, "/CN=a.example.com", ["DNS:a.example.com"], name="a")
    b_csr = base64_csr(tmp_path, "/CN=b.example.com", ["DNS:b.example.com"], name="b")

    status, _, headers = curl(server, "simpleenroll", data=a_csr)
    assert status == 401 and 'www-authenticate: basic realm="vpnca est"' in headers.lower()

    a_token = new_token(server, "a.example.com")
    status, body, _ = curl(server, "simpleenroll", "-u", a_token, data=b_csr)
    assert status == 403 and "may not request b.example.com" in refusal_detail(server, body)

    yesterday = FrozenClock(datetime.now(UTC) - timedelta(days=1))
    created_yesterday = create_token(server.ca.store, identities=(IkeIdentity.parse("a.example.com"),),
                                     profile="device", protocol="est", ttl=timedelta(hours=1),
                                     created_by="test", clock=yesterday)
    expiring = f"{created_yesterday.token_id}:{remember_secret(created_yesterday.secret)}"
    status, body, _ = curl(server, "simpleenroll", "-u", expiring, data=a_csr)
    assert status == 401 and "expired" in refusal_detail(server, body)

    status, body, _ = curl(server, "simpleenroll", "-u", a_token[:-2] + "xx", data=a_csr)
    assert status == 401

    garbage = tmp_path / "garbage.b64"
    garbage.write_bytes(b"!!!not base64!!!")
    status, body, _ = curl(server, "simpleenroll", "-u", a_token, data=garbage)
    assert status == 400 and "base64" in refusal_detail(server, body)
    garbage.write_bytes(base64.encodebytes(b"\x30\x82\x01\x00garbage DER"))
    status, body, _ = curl(server, "simpleenroll", "-u", a_token, data=garbage)
    assert status == 400 and "malformed CSR" in refusal_detail(server, body)
    big = tmp_path / "big.b64"
    big.write_bytes(b"A" * 100_000)
    status, _, _ = curl(server, "simpleenroll", "-u", a_token, data=big)
    assert status == 413

    status, first, _ = curl(server, "simpleenroll", "-u", a_token, data=a_csr)
    assert status == 200
    # the same token and CSR (a client that lost the answer) get the same certificate, nothing new
    status, again, _ = curl(server, "simpleenroll", "-u", a_token, data=a_csr)
    assert status == 200 and again == first
    a2_csr = base64_csr(tmp_path, "/CN=a.example.com", ["DNS:a.example.com"], name="a2")  # another key
    status, body, _ = curl(server, "simpleenroll", "-u", a_token, data=a2_csr)
    assert status == 401 and "already used" in refusal_detail(server, body)

    assert server.ca.store.count_by_status()["valid"] == before.get("valid", 0) + 1
    assert not [e for e in server.ca.store.audit_entries() if e.action == "enroll-refused"]  # logged instead
    events = [json.loads(line) for line in (server.ca.home / "log/vpnca.jsonl").read_text().splitlines()]
    refusals = ("enrollment.refused", "authentication.failed", "issuance.refused")
    assert len([e for e in events if e.get("event") in refusals and e.get("protocol") == "est"]) >= 8
    assert "[error]" not in server.log.read_text().lower() and "Traceback" not in server.log.read_text()


def test_reenroll_with_a_revoked_certificate_is_refused(server: RunningServer, tmp_path: Path) -> None:
    credential = new_token(server, "lost.example.com")
    csr = base64_csr(tmp_path, "/CN=lost.example.com", ["DNS:lost.example.com"])
    status, body, _ = curl(server, "simpleenroll", "-u", credential, data=csr)
    assert status == 200
    pem = certs_from_pkcs7(tmp_path, body)
    vpnca(server, "revoke", format(cert_of(pem).serial_number, "x"), "--reason", "keyCompromise")
    status, body, _ = curl(server, "simplereenroll", "--cert", str(pem), "--key", str(tmp_path / "req.key"),
                           data=csr)
    assert status == 403 and "revoked" in refusal_detail(server, body)


def test_reenroll_with_an_expired_certificate_is_refused(server: RunningServer, tmp_path: Path) -> None:
    ca = server.ca
    key = ec.generate_private_key(ec.SECP256R1())
    an_hour_ago = Authority(ca.settings, ca.store, ca.authority.certificate, ca.authority.key,
                            FrozenClock(datetime.now(UTC) - timedelta(hours=1)))
    issued = an_hour_ago.issue(IssueRequest(  # with a 1 s lifetime: expired for an hour
        profile="device", identities=(IkeIdentity.parse("old.example.com"),), public_key=key.public_key(),
        requester="test", lifetime=timedelta(seconds=1)))
    (tmp_path / "old.pem").write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    csr = base64_csr(tmp_path, "/CN=old.example.com", ["DNS:old.example.com"])
    before = ca.store.count_by_status()
    status, body, _ = curl(server, "simplereenroll", "--cert", str(tmp_path / "old.pem"),
                           "--key", str(tmp_path / "old.key"), data=csr)
    # refused in the TLS handshake (certificate expired alert) or, behind a proxy, with 403
    assert status in (0, 401, 403)
    header = urllib.parse.quote((tmp_path / "old.pem").read_text())
    status, body, _ = curl(server, "simplereenroll", "-H", f"X-SSL-Client-Cert: {header}", data=csr)
    assert status == 403 and "expired" in refusal_detail(server, body)
    assert ca.store.count_by_status() == before


# -- a credential gets only its own profile ------------------------------------------------------

def _issued_files(server: RunningServer, tmp_path: Path, profile: str, identity: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP384R1())
    issued = server.ca.authority.issue(IssueRequest(
        profile=profile, identities=(IkeIdentity.parse(identity),), public_key=key.public_key(),
        requester="test"))
    cert, key_file = tmp_path / f"{profile}.pem", tmp_path / f"{profile}.key"
    cert.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert), str(key_file)


def _refused_samples(server: RunningServer, profile: str) -> float:
    metrics = urllib.request.urlopen(f"{server.http}/metrics", timeout=10).read().decode()
    wanted = f'vpnca_requests_refused_total{{profile="{profile}",protocol="est",reason="not_authorized"}}'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(wanted))


def test_device_certificate_cannot_mint_gateway_certificates(server: RunningServer, tmp_path: Path) -> None:
    cert, key = _issued_files(server, tmp_path, "device", "phone1.example.com")
    csr = base64_csr(tmp_path, "/CN=phone1.example.com", ["DNS:phone1.example.com"])
    issued_before = server.ca.store.count_by_status().get("valid", 0)
    refused_before = _refused_samples(server, "gateway")
    for operation in ("gateway/simpleenroll", "gateway/serverkeygen"):
        status, body, _ = curl(server, operation, "--cert", cert, "--key", key, data=csr)
        assert status == 403, (operation, body)
        assert "profile device, not gateway" in refusal_detail(server, body)
    assert server.ca.store.count_by_status().get("valid", 0) == issued_before
    assert _refused_samples(server, "gateway") == refused_before + 2
    events = [json.loads(line) for line in (server.ca.home / "log/vpnca.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "issuance.refused" and e.get("reason") == "not_authorized"
               and e.get("profile") == "gateway" and "profile device" in e.get("detail", "") for e in events)
    # its own profile, for its own identities, stays allowed
    status, body, _ = curl(server, "simpleenroll", "--cert", cert, "--key", key, data=csr)
    assert status == 200, body
    other = base64_csr(tmp_path, "/CN=phone2.example.com", ["DNS:phone2.example.com"], name="other")
    status, _, _ = curl(server, "simpleenroll", "--cert", cert, "--key", key, data=other)
    assert status == 403


def test_gateway_certificate_cannot_mint_device_certificates(server: RunningServer, tmp_path: Path) -> None:
    cert, key = _issued_files(server, tmp_path, "gateway", "gw9.example.com")
    csr = base64_csr(tmp_path, "/CN=gw9.example.com", ["DNS:gw9.example.com"])
    for operation in ("simpleenroll", "device/simpleenroll", "serverkeygen", "device/serverkeygen"):
        status, body, _ = curl(server, operation, "--cert", cert, "--key", key, data=csr)
        assert status == 403, (operation, body)
        assert "profile gateway, not device" in refusal_detail(server, body)
    # re-enrollment keeps the gateway profile, whatever the label
    status, body, _ = curl(server, "simplereenroll", "--cert", cert, "--key", key, data=csr)
    assert status == 200, body
    renewed = cert_of(certs_from_pkcs7(tmp_path, body, name="renewed"))
    with server.ca.store.read() as session:
        record = session.get(CertificateRecord, format(renewed.serial_number, "x"))
        assert record is not None and record.profile == "gateway"


def test_bootstrap_certificate_gets_only_the_bootstrap_profile(server: RunningServer, tmp_path: Path) -> None:
    manufacturer_certificate(server, tmp_path, "sensor9.example.com")
    csr = base64_csr(tmp_path, "/CN=sensor9.example.com", ["DNS:sensor9.example.com"])
    status, body, _ = curl(server, "gateway/simpleenroll", "--cert", str(tmp_path / "idevid.pem"),
                           "--key", str(tmp_path / "idevid.key"), data=csr)
    assert status == 403, body


def test_enrollment_body_must_be_application_pkcs10(server: RunningServer, tmp_path: Path) -> None:
    credential = new_token(server, "typed.example.com")
    csr = base64_csr(tmp_path, "/CN=typed.example.com", ["DNS:typed.example.com"])
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        status, body, _ = curl(server, "simpleenroll", "-u", credential,
                               "-H", f"Content-Type: {content_type}", "--data-binary", f"@{csr}")
        assert status == 415 and b"application/pkcs10" in body
    status, _, _ = curl(server, "simpleenroll", "-u", credential, data=csr)
    assert status == 200
