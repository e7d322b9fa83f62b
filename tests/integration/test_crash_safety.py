"""kill -9 of `vpnca serve` and all its workers under concurrent EST load, then a restart: every
certificate a client received is valid in the database, no serial twice, the audit chain verifies,
and no client whose request was cut off loses its token (it retries the same token and CSR and gets
its certificate)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import select

from tests.conftest import CaHome, make_ca_home, wait_for_port
from tests.helpers import est_csr_body, free_port, remember_secret, run, stop_process
from vpnca.credentials import create_token
from vpnca.identities import IkeIdentity
from vpnca.store import CertificateRecord, CertStatus

CLIENTS = 8
ENROLLMENTS_PER_CLIENT = 40
KILLS = 3


class Service:
    """`vpnca serve --workers 2` on fixed ports, so that it can be killed and started again."""

    def __init__(self, ca: CaHome) -> None:
        self.ca = ca
        self.https_port, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.ca.home / f"serve-{self.starts}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vpnca.cli", "serve", "--workers", "2",
             "--https-port", str(self.https_port), "--http-port", str(self.http_port)],
            env=self.ca.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        wait_for_port(self.https_port, self.process, log)

    def kill_everything(self) -> None:
        """SIGKILL to the parent and every worker at once: nobody gets to clean up."""
        assert self.process is not None
        pids = [self.process.pid]
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for pid in pids[1:]:  # the workers are gone too (they are not our children: poll /proc)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
                if "State:\tZ" in status:
                    break
                time.sleep(0.05)


@pytest.fixture
def service(tmp_path: Path, softhsm) -> Iterator[Service]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    running = Service(ca)
    running.start()
    yield running
    if running.process is not None:
        stop_process(running.process)
    ca.store.dispose()



def test_kill_9_under_load_loses_no_certificate_and_no_token(service: Service) -> None:
    ca = service.ca
    jobs = []
    for owner in range(CLIENTS):
        for n in range(ENROLLMENTS_PER_CLIENT):
            name = f"c{owner}-{n}.example.com"
            token = create_token(ca.store, identities=(IkeIdentity.parse(name),), profile="device",
                                 protocol="est", ttl=timedelta(hours=1), created_by="test")
            remember_secret(token.secret)
            jobs.append((owner, name, f"{token.token_id}:{token.secret}", est_csr_body(name)))
    received: dict[str, x509.Certificate] = {}
    cut_off: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    trust = ssl.create_default_context(cafile=str(ca.home / "ca/root.pem"))

    def client(number: int) -> None:
        mine = [job for job in jobs if job[0] == number]
        with httpx.Client(base_url=f"https://localhost:{service.https_port}", verify=trust,
                          timeout=10) as http:
            for _, name, credential, csr in mine:
                deadline = time.monotonic() + 120
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        token_id, secret = credential.split(":", 1)
                        answer = http.post("/.well-known/est/simpleenroll", content=csr,
                                           auth=(token_id, secret),
                                           headers={"Content-Type": "application/pkcs10"})
                    except httpx.TransportError:  # the server was killed under us: retry the same request
                        if time.monotonic() > deadline:
                            with lock:
                                failures.append(f"{name}: no answer for 120 s")
                            return
                        time.sleep(0.2)
                        continue
                    if answer.status_code == 503:
                        time.sleep(0.2)
                        continue
                    if answer.status_code != 200:
                        with lock:
                            failures.append(f"{name}: {answer.status_code} {answer.text[:200]} "
                                            f"after {attempts}")
                        break
                    certificate = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer.content))[0]
                    with lock:
                        received[name] = certificate
                        if attempts > 1:
                            cut_off.append(name)
                    break

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for _ in range(KILLS):
        target = len(received) + len(jobs) // (KILLS + 2)  # kill while the load is running
        while len(received) < target and any(t.is_alive() for t in threads):
            time.sleep(0.02)
        service.kill_everything()
        service.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures
    assert len(received) == len(jobs), f"{len(received)} of {len(jobs)} clients got a certificate"

    with ca.store.read() as session:
        rows = {r.serial: r for r in session.scalars(select(CertificateRecord))}
    for name, certificate in received.items():
        serial = format(certificate.serial_number, "x")
        assert serial in rows and rows[serial].status == CertStatus.VALID, name
        assert rows[serial].der == certificate.public_bytes(serialization.Encoding.DER)
    assert len({c.serial_number for c in received.values()}) == len(received)  # no serial twice
    assert not [r for r in rows.values() if r.status == CertStatus.ISSUING], "unresolved reservations"
    verify = run([sys.executable, "-m", "vpnca.cli", "audit", "verify"], env=ca.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"{len(received)} certificates, {len(cut_off)} requests cut off and retried, "
          f"{len([r for r in rows.values() if r.status == CertStatus.FAILED])} "
          "reservations resolved as failed")
