"""A runtime that heals: the workers of `vpnca serve` and `vpnca ocsp serve` are supervised (a worker
that dies is replaced at its index, so the scheduler's worker comes back and CRLs keep coming), SIGTERM
drains the requests in flight, and `vpnca status` flags scheduled jobs that stopped running."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp

from hsm.softhsm import SoftHsmToken
from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server, wait_for_port
from tests.helpers import est_csr_body, free_port, remember_secret, run, stop_process
from tests.integration.test_workers import alive, children
from vpnca.authority import IssueRequest
from vpnca.credentials import create_token
from vpnca.identities import IkeIdentity
from vpnca.runtime.supervision import INITIAL_BACKOFF, SHUTDOWN_GRACE, Supervisor
from vpnca.scheduler import first_run
from vpnca.store import JobRun

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20) -> T:
    """Poll `check` until it returns something (not None, not False) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def events(home: Path, name: str, **match: Any) -> list[dict[str, Any]]:
    """The events called `name` (with these field values) in VPNCA_HOME/log/vpnca.jsonl, in order."""
    found = []
    path = home / "log" / "vpnca.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        if record.get("event") == name and all(record.get(k) == v for k, v in match.items()):
            found.append(record)
    return found


def worker_pids(home: Path, server: str) -> dict[int, int]:
    """Index -> pid of the current workers, from the supervisor's events."""
    pids: dict[int, int] = {}
    started = events(home, "worker.started", server=server)
    restarted = events(home, "worker.restarted", server=server)
    for record in started + restarted:
        pids[record["index"]] = record["worker_pid"]  # restarted events come after the started ones
    return pids


def ready_workers(home: Path, server: str, count: int) -> dict[int, int] | None:
    """Index -> pid of the current workers once `count` of them serve (loaded machines start them slowly)."""
    pids = worker_pids(home, server)
    serving = {(e["index"], e["pid"]) for e in events(home, "worker.ready", server=server)}
    return pids if len(pids) == count and all(item in serving for item in pids.items()) else None


def restarts(base: str, server: str) -> float | None:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    match = re.search(rf'^vpnca_worker_restarts_total{{server="{server}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None



def est_token(ca: CaHome, identity: str) -> tuple[str, str]:
    token = create_token(ca.store, identities=(IkeIdentity.parse(identity),), profile="device",
                         protocol="est", ttl=timedelta(hours=1), created_by="test")
    remember_secret(token.secret)
    return token.token_id, token.secret


def tls_context(ca: CaHome) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.home / "ca" / "root.pem"))


def est_enroll(server: RunningServer, identity: str) -> x509.Certificate:
    """A first enrollment with a one-time token over HTTPS: the issued certificate."""
    response = httpx.post(f"{server.est}/simpleenroll", content=est_csr_body(identity),
                          auth=est_token(server.ca, identity), headers={"Content-Type": "application/pkcs10"},
                          verify=tls_context(server.ca), timeout=30)
    assert response.status_code == 200, response.text
    [cert] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.content))
    return cert


def issue(ca: CaHome, identity: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return ca.authority.issue(IssueRequest(profile="device", identities=(IkeIdentity.parse(identity),),
                                           public_key=key.public_key(), requester="test")).certificate


def assert_ocsp_good(ca: CaHome, base: str, cert: x509.Certificate) -> None:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, ca.authority.certificate, hashes.SHA1()).build()
    response = httpx.post(f"{base}/ocsp", content=request.public_bytes(serialization.Encoding.DER),
                          headers={"Content-Type": "application/ocsp-request"}, timeout=30)
    assert response.status_code == 200
    answer = ocsp.load_der_ocsp_response(response.content)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.serial_number == cert.serial_number
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD


def replaced(home: Path, server: str, index: int, old_pid: int) -> int | None:
    """The pid of the worker that replaced `old_pid` at `index`, once the supervisor has started it."""
    found = events(home, "worker.restarted", server=server, index=index, previous_worker_pid=old_pid)
    return found[-1]["worker_pid"] if found else None


def kill_and_wait_for_replacement(home: Path, parent: int, server: str, index: int, pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    new = wait_for(f"a new {server} worker {index}", lambda: replaced(home, server, index, pid))
    assert new != pid and new in children(parent) and not alive({pid})
    [exited] = events(home, "worker.exited", server=server, index=index, worker_pid=pid)
    assert exited["signal"] == "SIGKILL" and exited["level"] == "warning"
    wait_for(f"the new {server} worker {index} to serve",
             lambda: events(home, "worker.ready", server=server, index=index, pid=new), timeout=60)
    return new


def crl_number(ca: CaHome) -> int:
    record = ca.store.latest_crl(ca.settings.ca.name)
    return record.number if record else 0


def test_killed_serve_workers_are_replaced_and_the_scheduler_comes_back(tmp_path: Path,
                                                                        softhsm: SoftHsmToken) -> None:
    ca = make_ca_home(tmp_path / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text() + "\n[crl]\nregenerate_every_seconds = 2\n")
    server = start_server(ca, "--workers", "2")
    try:
        parent = server.process.pid
        pids = wait_for("two serve workers", lambda: ready_workers(ca.home, "serve", 2), timeout=60)
        assert set(pids.values()) <= children(parent)
        assert wait_for("the restart counter", lambda: restarts(server.http, "serve") is not None)
        assert restarts(server.http, "serve") == 0
        device = issue(ca, "heal0.example.com")
        est_enroll(server, "heal1.example.com")
        assert_ocsp_good(ca, server.http, device)

        # a worker that only serves
        kill_and_wait_for_replacement(ca.home, parent, "serve", 1, pids[1])
        assert wait_for("1 restart in /metrics", lambda: restarts(server.http, "serve") == 1)
        for n in range(4):  # whichever worker takes them
            est_enroll(server, f"heal-a{n}.example.com")
            assert_ocsp_good(ca, server.http, device)

        # the worker that runs the scheduler: its replacement runs it again, and CRLs keep coming
        wait_for("a CRL from the scheduler", lambda: crl_number(ca) > 1)
        kill_and_wait_for_replacement(ca.home, parent, "serve", 0, pids[0])
        after_kill = crl_number(ca)
        crl_file = ca.home / "crl" / f"{ca.settings.ca.name}.crl"
        published = crl_file.read_bytes()
        wait_for("a CRL from the new scheduler", lambda: crl_number(ca) > after_kill, timeout=15)
        assert wait_for("the new CRL file", lambda: crl_file.read_bytes() != published)
        job = ca.store.job_run("crl")
        assert job is not None and job.ok
        assert wait_for("2 restarts in /metrics", lambda: restarts(server.http, "serve") == 2)
        est_enroll(server, "heal2.example.com")
        assert_ocsp_good(ca, server.http, device)
        assert server.process.poll() is None
    finally:
        stop_server(server)
    assert server.process.returncode == 0


def test_sigterm_drains_the_request_in_flight_then_exits_0(tmp_path: Path, softhsm: SoftHsmToken) -> None:
    ca = make_ca_home(tmp_path / "home", softhsm)
    server = start_server(ca, "--workers", "2")
    try:
        wait_for("two serve workers", lambda: ready_workers(ca.home, "serve", 2), timeout=60)
        workers = set(worker_pids(ca.home, "serve").values())
        identity = "drain.example.com"
        token_id, secret = est_token(ca, identity)
        body = est_csr_body(identity)
        basic = base64.b64encode(f"{token_id}:{secret}".encode()).decode()
        conn = tls_context(ca).wrap_socket(
            socket.create_connection(("127.0.0.1", server.https_port), timeout=30),
            server_hostname="localhost")
        with conn:
            # the request is in the application, reading its body, when the server answers 100 Continue
            conn.sendall((f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                          f"Authorization: Basic {basic}\r\nContent-Type: application/pkcs10\r\n"
                          f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
            assert conn.recv(1024).startswith(b"HTTP/1.1 100 Continue")
            conn.sendall(body[:20])
            os.kill(server.process.pid, signal.SIGTERM)
            draining = wait_for("the workers to drain", lambda: d if len(
                d := events(ca.home, "worker.draining", server="serve")) == 2 else None)
            assert max(e["connections"] for e in draining) >= 1  # ours, in flight
            # uvicorn's graceful shutdown: no more accepting, idle connections closed, waiting for ours
            wait_for("the drain", lambda: b"Waiting for connections to close" in server.log.read_bytes())
            assert server.process.poll() is None
            conn.sendall(body[20:])
            response = b""
            while chunk := conn.recv(65536):  # the worker closes the connection after answering
                response += chunk
        head, _, content = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"connection: close" in head.lower()
        [cert] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(content))
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == [identity]
        assert server.process.wait(timeout=SHUTDOWN_GRACE) == 0
        assert wait_for("the workers to exit", lambda: not alive(workers), timeout=5)
        [stopped] = events(ca.home, "workers.stopped", server="serve")
        assert all(e["exit_code"] == 0 for e in stopped["exits"].values()), stopped  # none killed
    finally:
        stop_server(server)


def test_killed_ocsp_workers_are_replaced(ca_home: CaHome) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ca_home.home / "ocsp.log"
    process = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port),
                                "--workers", "2"],
                               env=ca_home.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        device = issue(ca_home, "ocsp-heal.example.com")
        pids = wait_for("two OCSP workers", lambda: ready_workers(ca_home.home, "ocsp", 2), timeout=60)
        assert_ocsp_good(ca_home, base, device)
        assert wait_for("the restart counter", lambda: restarts(base, "ocsp") == 0)
        for count, index in enumerate((0, 1), start=1):
            kill_and_wait_for_replacement(ca_home.home, process.pid, "ocsp", index, pids[index])
            assert wait_for(f"{count} restarts", lambda: restarts(base, "ocsp") == count)  # noqa: B023
            for _ in range(4):
                assert_ocsp_good(ca_home, base, device)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHUTDOWN_GRACE) == 0
    finally:
        stop_process(process)


def test_status_flags_scheduled_jobs_that_stopped_running(ca_home: CaHome) -> None:
    store = ca_home.store
    store.record_job("crl", ok=True, message="CRL 2", next_attempt=None)
    store.record_job("ocsp-presign", ok=True, message="nothing due", next_attempt=None, audit=False)
    status = json.loads(run([sys.executable, "-m", "vpnca.cli", "status", "--json"], env=ca_home.env).stdout)
    assert {j["job"]: j["stale"] for j in status["jobs"]} == {"crl": False, "ocsp-presign": False}
    with store.write() as session:  # the scheduler stopped 3 hours ago (CRL every hour)
        row = session.get(JobRun, "crl")
        assert row is not None
        row.last_run = datetime.now(UTC) - timedelta(hours=3)
    status = json.loads(run([sys.executable, "-m", "vpnca.cli", "status", "--json"], env=ca_home.env).stdout)
    jobs = {j["job"]: j for j in status["jobs"]}
    assert jobs["crl"]["stale"] and jobs["crl"]["age_seconds"] > 3 * 3600 - 60
    assert jobs["crl"]["interval_seconds"] == 3600 and not jobs["ocsp-presign"]["stale"]
    text = run([sys.executable, "-m", "vpnca.cli", "status"], env=ca_home.env).stdout
    [line] = [line for line in text.splitlines() if line.startswith("job crl")]
    assert "STALE: last run 3h00m ago, every 60m" in line and " ok " not in line


def test_a_restarted_scheduler_runs_a_job_at_once_only_when_it_is_due() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert first_run(None, hour, now) == now  # never ran
    recent = JobRun(job="crl", last_run=now - timedelta(minutes=10), ok=True, message="", failures=0)
    assert first_run(recent, hour, now) == now + timedelta(minutes=50)
    old = JobRun(job="crl", last_run=now - 2 * hour, ok=True, message="", failures=0)
    assert first_run(old, hour, now) == now  # overdue: at once, not an interval away
    failing = JobRun(job="crl", last_run=now - timedelta(minutes=1), ok=False, message="", failures=3,
                     next_attempt=now + timedelta(minutes=7))
    assert first_run(failing, hour, now) == now + timedelta(minutes=7)  # the backoff holds


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append({"event": getattr(record, "event", None), **getattr(record, "fields", {})})

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.seen) if e["event"] == name]


def test_a_crash_looping_worker_is_restarted_with_a_growing_backoff() -> None:
    handler = Events()
    logger = logging.getLogger("vpnca.events")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    # a worker that exits with 3 as soon as it starts (os._exit: nothing to import in the worker)
    supervisor = Supervisor(os._exit, lambda i: (3,), 1, server="test", grace=5)
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        exited = wait_for("three exits", lambda: e if len(e := handler.named("worker.exited")) >= 3 else None)
        assert [e["restart_in_seconds"] for e in exited[:3]] == [INITIAL_BACKOFF, 2 * INITIAL_BACKOFF,
                                                                 4 * INITIAL_BACKOFF]
        assert all(e["exit_code"] == 3 and e["signal"] is None and e["index"] == 0 for e in exited)
        restarted = handler.named("worker.restarted")
        assert [e["previous_worker_pid"] for e in restarted[:2]] == [e["worker_pid"] for e in exited[:2]]
    finally:
        supervisor.stop()
        thread.join(10)
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not thread.is_alive()
    assert handler.named("workers.stopped")
