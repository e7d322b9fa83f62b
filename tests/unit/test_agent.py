"""`vpnca agent` without daemons: it imports nothing of the CA, schedules renewal at 2/3 of the lifetime,
writes keys 0600 atomically, builds CSRs that carry the identity, and pins fingerprints strictly."""

from __future__ import annotations

import ast
import ipaddress
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vpnca.agent import core, est
from vpnca.agent.errors import UsageError
from vpnca.agent.files import write_private
from vpnca.agent.keys import build_csr, generate_file_key, parse_identity
from vpnca.agent.state import AgentDir, AgentState, KeyRef, renewal_time
from vpnca.identities import identities_from_csr

AGENT = Path(__file__).resolve().parents[2] / "vpnca" / "agent"
# the CA side: its database, its issuance core, its token set-up, the enrollment servers, the app
FORBIDDEN = ("vpnca.store", "vpnca.authority", "vpnca.ca", "vpnca.ceremony", "vpnca.issuance", "vpnca.config",
             "vpnca.scheduler", "vpnca.server", "vpnca.app", "vpnca.gateway", "vpnca.audit", "enrollment",
             "ocsp", "sqlalchemy", "fastapi", "uvicorn", "hsm.softhsm")


def test_importing_the_agent_loads_nothing_of_the_ca() -> None:
    code = ("import json, sys; import vpnca.agent.cli, vpnca.agent.core; "
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=AGENT.parents[1])
    loaded = json.loads(result.stdout)
    leaked = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not leaked, leaked


def test_agent_sources_import_nothing_of_the_ca() -> None:
    for path in AGENT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                forbidden = any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
                assert not forbidden, f"{path.name} imports {name}"


def _cert(not_before: datetime, not_after: datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rw.example.com")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))


def test_renewal_is_due_at_two_thirds_of_the_lifetime_from_issuance_with_jitter() -> None:
    issued = datetime(2026, 1, 1, tzinfo=UTC)
    cert = _cert(issued - timedelta(minutes=5), issued + timedelta(days=6))  # the CA backdates notBefore
    times = [renewal_time(cert, issued, random.Random(seed)) for seed in range(200)]
    lifetime = timedelta(days=6)
    assert all(issued + lifetime * (2 / 3 - 0.05) <= t <= issued + lifetime * (2 / 3 + 0.05) for t in times)
    assert max(times) - min(times) > lifetime * 0.08  # the jitter spreads a fleet out
    # received outside its validity (a clock far off): from notBefore
    late = renewal_time(cert, issued + timedelta(days=10), random.Random(1))
    assert late < cert.not_valid_after_utc


def test_private_keys_are_written_0600_atomically(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("old")
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temp file left behind


@pytest.mark.parametrize(("identity", "kind"), [("rw.example.com", "fqdn"), ("10.1.2.3", "ip"),
                                                ("alice@example.com", "email"), ("CN=rw,O=Example", "dn")])
def test_the_csr_carries_the_identity_as_vpnca_reads_it(identity: str, kind: str) -> None:
    parsed = parse_identity(identity)
    csr = build_csr(parsed, generate_file_key("ec-p256"))
    assert csr.is_signature_valid
    assert [(i.kind, i.value) for i in identities_from_csr(csr)] == [(kind, parsed.value)]
    if kind == "ip":
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(identity)]


def test_fingerprints_are_normalised_and_checked() -> None:
    value = "AB:" * 31 + "CD"
    assert est.normalise_fingerprint(value) == "ab" * 31 + "cd"
    assert est.normalise_fingerprint("sha256:" + "0" * 64) == "0" * 64
    for bad in ("abc", "g" * 64, ""):
        with pytest.raises(UsageError):
            est.normalise_fingerprint(bad)


def test_endpoint_urls() -> None:
    assert est.Endpoint.parse("https://ca.example.com:8443/").path("cacerts") == "/.well-known/est/cacerts"
    endpoint = est.Endpoint.parse("https://ca.example.com/pki/.well-known/est")
    assert endpoint.port == 443
    assert endpoint.path("simpleenroll", "device") == "/pki/.well-known/est/device/simpleenroll"
    with pytest.raises(UsageError):
        est.Endpoint.parse("http://ca.example.com")


def test_enroll_refuses_bad_options_before_any_network(tmp_path: Path) -> None:
    base = {"server": "https://127.0.0.1:1", "token": "id:secret", "identity": "rw.example.com",
            "directory": tmp_path / "agent"}
    for bad in ({"ca_fingerprint": None}, {"ca_fingerprint": "00" * 32, "cacert": tmp_path / "x"},
                {"ca_fingerprint": "00" * 32, "token": "nocolon"},
                {"ca_fingerprint": "00" * 32, "pkcs11_module": "/lib.so"}):
        with pytest.raises(UsageError):
            core.enroll(core.EnrollOptions(**{**base, **bad}))  # type: ignore[arg-type]
    assert not (tmp_path / "agent").exists()


def test_state_round_trips_without_secrets(tmp_path: Path) -> None:
    directory = AgentDir(tmp_path)
    state = AgentState(server="https://ca:8443", trust_anchor_sha256="0" * 64, profile="device",
                       identity="rw.example.com", key=KeyRef(kind="pkcs11", algorithm="ec-p256",
                                                             module="/m.so", token_label="t", label="k",
                                                             key_id="6b", pin_file="/etc/pin"),
                       previous_key=KeyRef(kind="file", algorithm="ec-p256", path="/k"))
    directory.save(state)
    assert directory.load() == state
    assert directory.state.stat().st_mode & 0o777 == 0o600
