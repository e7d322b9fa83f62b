"""Profiles as data: a profile added in vpnca.toml issues over real EST (curl) with its own EKUs, lifetime
and key types, and a profile whose certificates pkilint would refuse never reaches the token."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from enrollment.est import CsrAttrs
from hsm.softhsm import SoftHsmToken
from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import openssl_csr, remember_secret, require_tool, run
from vpnca.authority import Authority, IssueRequest
from vpnca.config import load_settings
from vpnca.errors import PolicyViolation
from vpnca.identities import IkeIdentity
from vpnca.issuer import BACKDATE

MERCHANT_EKU = "1.3.6.1.4.1.55555.7"
LINT_CODE = "pkix.ee_certificate_keycertsign_keyusage_set"
PROFILES = f"""
[profiles.merchant]
ekus = ["clientAuth", "{MERCHANT_EKU}"]
lifetime_hours = 5
key_types = ["ec-p384"]
protocols = ["est"]

[profiles.misconfigured]
key_usages = ["digitalSignature", "keyCertSign"]
protocols = ["est"]

[profiles.kiosk]
key_types = ["ed25519"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsmToken) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("profiles") / "home"
    ca = make_ca_home(home, softhsm)
    config = home / "vpnca.toml"
    config.write_text(config.read_text() + PROFILES)
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def vpnca(server: RunningServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=server.ca.env, check=check)


def token(server: RunningServer, name: str, profile: str) -> str:
    created = vpnca(server, "token", "create", "--id", name, "--profile", profile)
    return remember_secret(created.stdout.strip())


def curl(server: RunningServer, path: str, *args: str, data: Path | None = None) -> tuple[int, bytes]:
    out = server.ca.home / "curl.out"
    out.unlink(missing_ok=True)
    cmd = [require_tool("curl"), "-sS", "--cacert", str(server.ca.home / "ca/root.pem"), "-o", str(out),
           "-w", "%{http_code}", *args]
    if data is not None:
        cmd += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{data}"]
    result = subprocess.run([*cmd, f"{server.est}/{path}"], capture_output=True, text=True, timeout=60,
                            check=False)
    return int(result.stdout or 0), out.read_bytes() if out.exists() else b""


def est_csr(tmp_path: Path, name: str, algorithm: str) -> Path:
    csr = openssl_csr(tmp_path, subject=f"/CN={name}", sans=[f"DNS:{name}"], algorithm=algorithm, name=name)
    der = tmp_path / f"{name}.der"
    run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER", "-out", str(der)])
    body = tmp_path / f"{name}.b64"
    body.write_bytes(base64.encodebytes(der.read_bytes()))
    return body


def issued_certificate(tmp_path: Path, body: bytes) -> x509.Certificate:
    p7 = tmp_path / "issued.p7"
    p7.write_bytes(base64.b64decode(body))
    pem = run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs"]).stdout
    return x509.load_pem_x509_certificate(pem.encode())


def refused_samples(server: RunningServer, profile: str, reason: str) -> float:
    metrics = urllib.request.urlopen(f"{server.http}/metrics", timeout=10).read().decode()
    wanted = f'vpnca_requests_refused_total{{profile="{profile}",protocol="est",reason="{reason}"}}'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(wanted))


def test_a_profile_from_vpnca_toml_issues_over_est(server: RunningServer, tmp_path: Path) -> None:
    status, body = curl(server, "merchant/csrattrs")
    assert status == 200
    attributes = CsrAttrs.load(base64.b64decode(body))
    wanted = [item.chosen.dump() for item in attributes]  # the profile's first key type is P-384:
    assert core.ObjectIdentifier("1.2.840.10045.4.3.3").dump() in wanted  # ecdsa-with-SHA384
    assert core.ObjectIdentifier("1.3.132.0.34").dump() in b"".join(wanted)  # on secp384r1
    status, body = curl(server, "merchant/simpleenroll", "-u", token(server, "till1.example.com", "merchant"),
                        data=est_csr(tmp_path, "till1.example.com", "ec-p384"))
    assert status == 200, body
    certificate = issued_certificate(tmp_path, body)
    ekus = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [ExtendedKeyUsageOID.CLIENT_AUTH, ObjectIdentifier(MERCHANT_EKU)]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(hours=5) + BACKDATE


def test_a_key_type_the_profile_does_not_list_is_refused(server: RunningServer, tmp_path: Path) -> None:
    status, _ = curl(server, "merchant/simpleenroll", "-u", token(server, "till2.example.com", "merchant"),
                     data=est_csr(tmp_path, "till2.example.com", "ec-p256"))
    assert status == 403


def test_est_serves_only_the_profiles_that_allow_it(server: RunningServer, tmp_path: Path) -> None:
    assert curl(server, "service/csrattrs")[0] == 404
    assert curl(server, "nosuch/cacerts")[0] == 404
    assert curl(server, "merchant/cacerts")[0] == 200
    refused = vpnca(server, "token", "create", "--id", "till3.example.com", "--profile", "merchant",
                    "--protocol", "scep", check=False)
    assert refused.returncode != 0
    assert "not issued over SCEP" in refused.stderr


def test_ed25519_keys_only_where_the_profile_lists_them(server: RunningServer) -> None:
    ca = server.ca
    authority = Authority(load_settings(ca.home), ca.store, ca.authority.certificate, ca.authority.key)
    key = ed25519.Ed25519PrivateKey.generate().public_key()

    def request(profile: str) -> IssueRequest:
        return IssueRequest(profile=profile, identities=(IkeIdentity.parse("kiosk1.example.com"),),
                            public_key=key, requester="test")

    with pytest.raises(PolicyViolation):
        authority.issue(request("device"))
    certificate = authority.issue(request("kiosk")).certificate
    assert isinstance(certificate.public_key(), ed25519.Ed25519PublicKey)
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_a_profile_pkilint_refuses_is_refused_before_signing(server: RunningServer, tmp_path: Path) -> None:
    before = refused_samples(server, "misconfigured", "lint")
    status, body = curl(server, "misconfigured/simpleenroll", "-u",
                        token(server, "till4.example.com", "misconfigured"),
                        data=est_csr(tmp_path, "till4.example.com", "ec-p256"))
    assert status == 403
    assert LINT_CODE not in body.decode()  # the detail is in the log, the client gets its id
    assert refused_samples(server, "misconfigured", "lint") == before + 1
    events = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    refusal = next(e for e in events if e.get("event") == "issuance.refused" and e.get("reason") == "lint")
    assert refusal["profile"] == "misconfigured"
    assert any(LINT_CODE in finding for finding in refusal["findings"])
    assert refusal["error_id"] in body.decode()
    listed = vpnca(server, "list", "--json", "--profile", "misconfigured").stdout
    records = [json.loads(line) for line in listed.splitlines() if line.strip()]
    assert [r["status"] for r in records] == ["failed"]  # the serial was reserved, nothing was signed
