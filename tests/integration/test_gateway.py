"""The bundled gateway: two charons in network namespaces, certificates from vpnca (the gateway's by
`vpnca gateway enroll` + VICI push, the road warrior's through EST), OCSP revocation, scheduled renewal."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import vici
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import free_port, openssl_csr, require_tool, run
from tests.integration.gateway_lab import (
    GATEWAY_ID,
    established,
    initiate,
    load_ca_certificates,
    road_warrior_conn,
    start_ocsp_responder,
    terminate,
    vpnca,
)
from tests.integration.strongswan import Charon, two_hosts

CLIENT_ID = "rw.example.com"


@dataclass
class Lab:
    ca: CaHome
    gw: Charon
    rw: Charon
    est: RunningServer
    client_serial: str
    scheduler: subprocess.Popen[bytes]


def enroll_client_over_est(lab_ca: CaHome, est: RunningServer, tmp: Path) -> tuple[bytes, bytes]:
    credential = vpnca(lab_ca, "token", "create", "--id", CLIENT_ID).strip()
    csr = openssl_csr(tmp, subject=f"/CN={CLIENT_ID}", sans=[f"DNS:{CLIENT_ID}"], name="client")
    der = tmp / "client.der"
    run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER", "-out", str(der)])
    body = tmp / "client.b64"
    body.write_bytes(base64.b64encode(der.read_bytes()))
    out = tmp / "client.p7"
    run([require_tool("curl"), "-sSf", "--cacert", str(lab_ca.home / "ca/root.pem"), "-u", credential,
         "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}", "-o", str(out),
         f"{est.est}/simpleenroll"])
    p7 = tmp / "client.p7.der"
    p7.write_bytes(base64.b64decode(out.read_bytes()))
    certs = run([require_tool("openssl"), "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs"]).stdout
    cert = x509.load_pem_x509_certificate(certs.encode())
    key = serialization.load_pem_private_key((tmp / "client.key").read_bytes(), None)
    return cert.public_bytes(serialization.Encoding.DER), key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_road_warrior(rw: Charon, ca: CaHome, cert_der: bytes, key_der: bytes, gw: Charon) -> None:
    with rw.session() as session:
        session.load_key({"type": "any", "data": key_der})
        session.load_cert({"type": "X509", "flag": "NONE", "data": cert_der})
        load_ca_certificates(session, ca)
        session.load_conn({"home": road_warrior_conn(
            local=rw.address, remote=gw.address, identity=CLIENT_ID, gateway_id=GATEWAY_ID, cert_der=cert_der,
            local_ts="10.200.2.0/24", remote_ts="10.200.1.0/24")})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    require_tool("ip")
    base = tmp_path_factory.mktemp("gateway")
    ocsp_port = free_port()
    ca = make_ca_home(base / "home", softhsm, http_base=f"http://127.0.0.1:{ocsp_port}")
    with two_hosts(base) as (gw, rw):
        config = ca.home / "vpnca.toml"
        config.write_text(config.read_text().replace("[profiles.gateway]\nlifetime_days = 30",
                                                     "[profiles.gateway]\nlifetime_minutes = 2")
                          + f'\n[gateway]\nid = "{GATEWAY_ID}"\nvici_socket = "{gw.vici_uri}"\n'
                          + 'local_ts = ["10.200.1.0/24"]\nremote_ts = ["10.200.2.0/24"]\n'
                          + "check_every_seconds = 3\nrenewal_jitter = 0.02\n"
                          + "\n[ocsp]\npresign_every_seconds = 2\n")
        # the responder the gateway polls runs in the gateway's namespace, on the AIA URL's port
        responder = start_ocsp_responder(ca, gw, ocsp_port, base / "ocsp.log")
        est = start_server(ca)
        scheduler = None
        try:
            vpnca(ca, "gateway", "enroll")
            vpnca(ca, "gateway", "push")
            (base / "swanctl.conf").write_text(vpnca(ca, "gateway", "render"))
            cert_der, key_der = enroll_client_over_est(ca, est, base)
            load_road_warrior(rw, ca, cert_der, key_der, gw)
            serial = format(x509.load_der_x509_certificate(cert_der).serial_number, "x")
            scheduler = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "-v", "scheduler"], env=ca.env,
                                         stdout=(base / "scheduler.log").open("wb"), stderr=subprocess.STDOUT)
            time.sleep(3)  # the scheduler's first pass pre-signs the new certificates' OCSP answers
            yield Lab(ca, gw, rw, est, serial, scheduler)
        finally:
            if scheduler is not None:
                scheduler.terminate()
                scheduler.wait()
            stop_server(est)
            responder.terminate()
            responder.wait()
            ca.store.dispose()


def test_push_loaded_the_gateway_credentials(lab: Lab) -> None:
    with lab.gw.session() as session:
        conns = [name for item in session.list_conns() for name in item]
        authorities = [name for item in session.list_authorities() for name in item]
    assert conns == ["vpnca-gateway"] and authorities == ["vpnca"]
    gateway_cert = x509.load_pem_x509_certificate((lab.ca.home / "gateway/gateway.pem").read_bytes())
    assert format(gateway_cert.serial_number, "x") in lab.gw.cert_serials()
    rendered = (lab.ca.home.parent / "swanctl.conf").read_text()
    for line in ("proposals = aes256gcm16-prfsha384-ecp384", "esp_proposals = aes256gcm16-ecp384",
                 f"id = {GATEWAY_ID}", "revocation = strict", "mobike = yes", "local_ts = 10.200.1.0/24",
                 "ocsp_uris = http://127.0.0.1:"):
        assert line in rendered, line


def test_ike_sa_establishes_with_certificate_authentication(lab: Lab) -> None:
    initiate(lab.rw, "home")
    sas = established(lab.gw)
    assert sas, lab.gw.log()[-3000:]
    sa = sas[0]
    assert sa["local-id"] == GATEWAY_ID and sa["remote-id"] == CLIENT_ID
    assert "certificate status is good" in lab.gw.log()


def test_scheduler_renews_the_gateway_certificate_and_pushes_it(lab: Lab) -> None:
    before = set(lab.gw.cert_serials())
    ike_before = {sa["uniqueid"] for sa in established(lab.gw)}
    deadline = time.monotonic() + 150  # lifetime 2 minutes: due at 2/3, checked every 3 s
    while set(lab.gw.cert_serials()) == before:
        assert time.monotonic() < deadline, (lab.ca.home.parent / "scheduler.log").read_text()[-3000:]
        time.sleep(2)
    renewed = x509.load_pem_x509_certificate((lab.ca.home / "gateway/gateway.pem").read_bytes())
    assert format(renewed.serial_number, "x") in lab.gw.cert_serials()
    assert ike_before <= {sa["uniqueid"] for sa in established(lab.gw)}  # the established SA stayed up
    terminate(lab.rw, "home")
    initiate(lab.rw, "home")
    assert established(lab.gw)
    runs = {j.job: j for j in lab.ca.store.job_runs()}
    audited = [e.details for e in lab.ca.store.audit_entries()
               if e.action == "job" and "gateway-renewal" in e.details]
    assert runs["gateway-renewal"].ok and any("renewed" in d for d in audited)


def test_revoked_client_is_refused_by_the_gateway_through_ocsp(lab: Lab) -> None:
    terminate(lab.rw, "home")
    vpnca(lab.ca, "revoke", lab.client_serial, "--reason", "keyCompromise")
    with lab.gw.session() as session:
        session.flush_certs({"type": "ocsp_response"})
    with pytest.raises(vici.exception.CommandException):
        initiate(lab.rw, "home")
    assert not established(lab.gw)
    log = lab.gw.log()
    assert "certificate was revoked" in log and "reason: key compromise" in log and "AUTH_FAILED" in log
