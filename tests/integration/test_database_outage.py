"""PostgreSQL stopped under a running `vpnca serve` and started again: pre-signed OCSP answers go on
from memory, enrollment answers 503 + Retry-After and then 200 without a restart, and the log says
once that the database went and once that it came back (no traceback per request)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ocsp.service import load_ocsp_service
from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import est_csr_body, remember_secret
from tests.postgres import PostgresCluster
from vpnca.authority import IssueRequest
from vpnca.credentials import create_token
from vpnca.identities import IkeIdentity


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    own = PostgresCluster()  # its own cluster: this test stops it
    own.start()
    yield own
    own.remove()


@pytest.fixture
def server(cluster: PostgresCluster, tmp_path, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm, database_url=cluster.url)
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()



def _events(server: RunningServer, name: str) -> list[dict[str, object]]:
    lines = (server.ca.home / "log/vpnca.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == name and e.get("dependency") == "database"]


def test_database_outage_keeps_presigned_ocsp_and_enrollment_recovers(
        server: RunningServer, cluster: PostgresCluster) -> None:
    ca = server.ca
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.authority.issue(IssueRequest(profile="device",
                                             identities=(IkeIdentity.parse("db.example.com"),),
                                             public_key=key.public_key(), requester="test"))
    load_ocsp_service(ca.settings, ca.store).presign_backlog()
    request = (ocsp.OCSPRequestBuilder().add_certificate(issued.certificate, ca.authority.certificate,
                                                         hashes.SHA1()).build().public_bytes(serialization.Encoding.DER))
    token = create_token(ca.store, identities=(IkeIdentity.parse("late.example.com"),), profile="device",
                         protocol="est", ttl=timedelta(hours=1), created_by="test")
    remember_secret(token.secret)
    csr = est_csr_body("late.example.com")
    ca.store.dispose()
    trust = ssl.create_default_context(cafile=str(ca.home / "ca/root.pem"))
    with httpx.Client(base_url=server.http, timeout=15) as http, \
            httpx.Client(base_url=f"https://localhost:{server.https_port}", verify=trust,
                         timeout=15) as https:
        def ocsp_status() -> ocsp.OCSPCertStatus:
            answer = http.post("/ocsp", content=request, headers={"Content-Type": "application/ocsp-request"})
            assert answer.status_code == 200
            return ocsp.load_der_ocsp_response(answer.content).certificate_status

        def enroll() -> httpx.Response:
            return https.post("/.well-known/est/simpleenroll", content=csr,
                              auth=(token.token_id, token.secret),
                              headers={"Content-Type": "application/pkcs10"})

        assert ocsp_status() == ocsp.OCSPCertStatus.GOOD  # in memory from now on
        cluster.stop()
        for _ in range(20):
            assert ocsp_status() == ocsp.OCSPCertStatus.GOOD
            refused = enroll()
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert len(_events(server, "dependency.down")) == 1
        cluster.start()
        deadline = time.monotonic() + 30
        while (answer := enroll()).status_code == 503 and time.monotonic() < deadline:
            assert ocsp_status() == ocsp.OCSPCertStatus.GOOD
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert ocsp_status() == ocsp.OCSPCertStatus.GOOD
        assert len(_events(server, "dependency.up")) == 1
    log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]
