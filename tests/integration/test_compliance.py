"""Compliance evidence and operations: JSON events (file and syslog over TLS), Prometheus metrics,
the evidence pack and its verification, the expiry report and status."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import free_port, openssl_csr, remember_secret, require_tool, run


@dataclass
class SyslogReceiver:
    """An RFC 5425 receiver: TLS, octet-counted frames."""

    port: int
    ca_file: Path
    messages: list[str] = field(default_factory=list)

    def serve(self, server: ssl.SSLSocket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: ssl.SSLSocket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[:int(length)].decode())
                    buffer = rest[int(length):]


def start_syslog(directory: Path) -> tuple[SyslogReceiver, ssl.SSLSocket]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "syslog.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "syslog.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "syslog.pem", directory / "syslog.key")
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    server = context.wrap_socket(listener, server_side=True)
    receiver = SyslogReceiver(port, directory / "syslog.pem")
    threading.Thread(target=receiver.serve, args=(server,), daemon=True).start()
    return receiver, server


@dataclass
class Story:
    server: RunningServer
    syslog: SyslogReceiver
    issued: str
    renewed: str
    pack: Path

    @property
    def ca(self) -> CaHome:
        return self.server.ca


def vpnca(ca: CaHome, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=ca.env, check=check)


def curl_est(server: RunningServer, path: str, body: Path, *auth: str) -> bytes:
    out = server.ca.home / "est.out"
    run([require_tool("curl"), "-sS", "--cacert", str(server.ca.home / "ca/root.pem"), *auth,
         "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}", "-o", str(out),
         f"{server.est}/{path}"])
    return out.read_bytes()


def b64_csr(tmp: Path, name: str, file: str) -> Path:
    csr = openssl_csr(tmp, subject=f"/CN={name}", sans=[f"DNS:{name}"], name=file)
    der = tmp / f"{file}.der"
    run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER", "-out", str(der)])
    out = tmp / f"{file}.b64"
    out.write_bytes(base64.b64encode(der.read_bytes()))
    return out


def cert_from(body: bytes, tmp: Path, name: str) -> Path:
    p7 = tmp / f"{name}.p7"
    p7.write_bytes(base64.b64decode(body))
    pem = tmp / f"{name}.pem"
    run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs",
         "-out", str(pem)])
    return pem


def serial_of(pem: Path) -> str:
    return format(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number, "x")


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[Story]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("compliance")
    receiver, listener = start_syslog(base)
    ca = make_ca_home(base / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text() + f'\n[logging]\nsyslog_tls = "localhost:{receiver.port}"\n'
                      f'syslog_ca_file = "{receiver.ca_file}"\n')
    server = start_server(ca)
    try:
        credential = vpnca(ca, "token", "create", "--id", "audit.example.com").stdout.strip()
        remember_secret(credential.partition(":")[2])
        first = cert_from(curl_est(server, "simpleenroll", b64_csr(base, "audit.example.com", "first"),
                                   "-u", credential),
                          base, "first")
        renew_csr = b64_csr(base, "audit.example.com", "renew")
        second = cert_from(curl_est(server, "simplereenroll", renew_csr, "--cert", str(first),
                                    "--key", str(base / "first.key")), base, "second")
        issued, renewed = serial_of(first), serial_of(second)
        vpnca(ca, "revoke", issued, "--reason", "superseded")
        # an authentication failure and a policy refusal
        curl_est(server, "simpleenroll", renew_csr, "-u", credential)
        vpnca(ca, "issue", "--profile", "device", "--id", "x.example.org", "--key-out", str(base / "x.key"),
              check=False)
        run([require_tool("openssl"), "ocsp", "-issuer", str(ca.home / "ca/sub.pem"), "-cert", str(second),
             "-url", f"{server.http}/ocsp", "-CAfile", str(ca.home / "ca/root.pem")])
        pack = base / "pack"
        vpnca(ca, "audit", "export", str(pack))
        yield Story(server, receiver, issued, renewed, pack)
    finally:
        stop_server(server)
        listener.close()
        ca.store.dispose()


def events(story: Story) -> list[dict[str, object]]:
    lines = (story.ca.home / "log/vpnca.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_issued_renewed_revoked_and_refusals_are_logged_as_json_events(story: Story) -> None:
    found = events(story)
    by_event: dict[str, list[dict[str, object]]] = {}
    for event in found:
        by_event.setdefault(str(event.get("event")), []).append(event)
    issued = next(e for e in by_event["certificate.issued"] if e["serial"] == story.issued)
    assert issued["protocol"] == "est" and issued["profile"] == "device" and issued["client"] == "127.0.0.1"
    assert issued["identity"] == ["audit.example.com"] and str(issued["requester"]).startswith("token:")
    renewed = next(e for e in by_event["certificate.renewed"] if e["serial"] == story.renewed)
    assert renewed["renews"] == story.issued and str(renewed["requester"]).startswith("cert:")
    revoked = next(e for e in by_event["certificate.revoked"] if e["serial"] == story.issued)
    assert revoked["reason"] == "superseded" and str(revoked["requester"]).startswith("cli:")
    assert any(e["client"] == "127.0.0.1" and e["status"] == 401 for e in by_event["authentication.failed"])
    assert any(e["reason"] == "policy" and e["identity"] == ["x.example.org"]
               for e in by_event["issuance.refused"])
    assert by_event["crl.published"] and by_event["ocsp.published"]


def test_events_are_forwarded_to_syslog_over_tls(story: Story) -> None:
    frames = [m for m in story.syslog.messages if "certificate.issued" in m and story.issued in m]
    assert frames, story.syslog.messages[:5]
    header, _, body = frames[0].partition(" - ")
    assert header.startswith("<14>1 ") and " vpnca " in header
    assert json.loads(body)["serial"] == story.issued


def test_metrics_count_issuance_refusals_ocsp_and_state(story: Story) -> None:
    with urllib.request.urlopen(f"{story.server.http}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['vpnca_certificates_issued_total{kind="issued",profile="device",protocol="est"}'] >= 1
    assert samples['vpnca_certificates_issued_total{kind="renewed",profile="device",protocol="est"}'] >= 1
    assert samples['vpnca_certificates{status="revoked"}'] >= 1
    assert sum(v for k, v in samples.items() if k.startswith("vpnca_requests_refused_total{")
               and 'protocol="est",reason="authentication"' in k) >= 1
    assert sum(v for k, v in samples.items() if k.startswith("vpnca_ocsp_requests_total")) >= 1
    assert samples["vpnca_ocsp_response_seconds_count"] >= 1
    assert sum(v for k, v in samples.items() if k.startswith("vpnca_token_sign_seconds_count")) >= 2
    assert samples["vpnca_crl_age_seconds"] >= 0
    assert samples['vpnca_certificates_expiring{within="14d"}'] >= 1
    assert sum(v for k, v in samples.items() if k.startswith("vpnca_scheduler_runs_total")) >= 1


def test_evidence_pack_holds_the_register_and_verifies(story: Story) -> None:
    lines = (story.pack / "register/certificates.jsonl").read_text().splitlines()  # JSON Lines
    register = {r["serial"]: r for r in map(json.loads, lines)}
    assert register[story.issued]["status"] == "revoked"
    assert register[story.issued]["revocation_reason"] == "superseded"
    assert register[story.renewed]["status"] == "valid" and register[story.renewed]["renews"] == story.issued
    csv_text = (story.pack / "register/certificates.csv").read_text()
    assert story.issued in csv_text and story.renewed in csv_text
    fingerprints = json.loads((story.pack / "ca/fingerprints.json").read_text())
    assert {f["role"] for f in fingerprints} == {"root", "sub", "ocsp", "scep-ra"}
    verification = json.loads((story.pack / "audit/verification.json").read_text())
    assert verification["ok"] and len(verification["head_hash"]) == 64
    assert "PRIVATE KEY" not in "".join(p.read_text(errors="replace")
                                        for p in story.pack.rglob("*") if p.is_file())
    out = vpnca(story.ca, "audit", "verify", "--pack", str(story.pack))
    assert out.returncode == 0 and "intact" in out.stdout


@pytest.mark.parametrize("target", ["register/certificates.csv", "register/certificates.jsonl",
                                    "audit/chain.jsonl", "audit/verification.json", "policy.json",
                                    "ca/fingerprints.json",
                                    "config/vpnca.toml", "crl/*.crl", "ca/sub-*.pem", "MANIFEST.sha256"])
def test_editing_any_file_of_the_pack_is_detected(story: Story, tmp_path: Path, target: str) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(story.pack, pack)
    path = next(pack.glob(target))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    out = vpnca(story.ca, "audit", "verify", "--pack", str(pack), check=False)
    assert out.returncode == 1 and "evidence pack broken" in out.stdout
    if target != "MANIFEST.sha256":
        assert str(path.relative_to(pack)) in out.stdout


def test_a_rewritten_manifest_is_caught_against_the_database(story: Story, tmp_path: Path) -> None:
    import hashlib

    pack = tmp_path / "pack"
    shutil.copytree(story.pack, pack)
    (pack / "policy.json").write_text("{}")
    manifest = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(pack).as_posix()}\n"
                       for p in sorted(pack.rglob("*")) if p.is_file() and p.name != "MANIFEST.sha256")
    (pack / "MANIFEST.sha256").write_text(manifest)
    out = vpnca(story.ca, "audit", "verify", "--pack", str(pack), check=False)
    assert out.returncode == 1 and "not the manifest this CA exported" in out.stdout


def test_expiring_report_and_status(story: Story) -> None:
    report = [json.loads(line) for line in
              vpnca(story.ca, "report", "expiring", "--within", "14d", "--json").stdout.splitlines()]
    serials = {r["serial"] for r in report}
    assert story.renewed in serials and story.issued not in serials
    assert vpnca(story.ca, "report", "expiring", "--within", "1h", "--json").stdout == ""
    status = json.loads(vpnca(story.ca, "status", "--json").stdout)
    assert status["token"]["ok"] and status["crl"]["fresh"] and status["audit"]["ok"]
    assert {j["job"] for j in status["jobs"]} >= {"crl", "ocsp-presign"}
    assert isinstance(status["ocsp_presign_backlog"], int)
