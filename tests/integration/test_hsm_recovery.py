"""The token goes away and comes back: every worker reopens its session and key handles by itself.

The token is taken away for real: SoftHSM2 2.6.1 keeps its token in a directory under
`directories.tokendir`; renaming that directory makes every call fail (ObjectHandleInvalid on a key,
GeneralError on the slot), and renaming it back is seen only after C_Finalize + C_Initialize, which
is what the token layer does when it reopens. Each test has its own SoftHSM token directory, so the
token shared by the rest of the suite is never touched.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp

from tests.conftest import wait_for_port
from tests.helpers import est_csr_body, free_port, remember_secret, run, stop_process
from tests.integration.test_workers import workers_of

ROOT = Path(__file__).resolve().parents[2]


def _private_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "VPNCA_DATABASE_URL")}
    env["VPNCA_HOME"] = str(home)
    return env


@dataclass
class Server:
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    https_port: int
    http_port: int
    log: Path

    @property
    def est(self) -> str:
        return f"https://localhost:{self.https_port}/.well-known/est"

    @property
    def token_dir(self) -> Path:
        tokens = [p for p in (self.home / "softhsm/tokens").iterdir() if p.is_dir()]
        assert len(tokens) == 1, tokens
        return tokens[0]


class TokenAway:
    """Take the SoftHSM token away by renaming its directory, and give it back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.away = directory.parent.parent / f"away-{directory.name}"

    def __enter__(self) -> Self:
        self.directory.rename(self.away)
        return self

    def back(self) -> None:
        if self.away.exists():
            self.away.rename(self.directory)

    def __exit__(self, *_: object) -> None:
        self.back()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`vpnca serve --workers 2` on a CA whose token lives in its own SoftHSM directory."""
    home = tmp_path / "home"
    env = _private_env(home)
    run([sys.executable, "-m", "vpnca.cli", "init", "--softhsm", "--domain", "example.com",
         "--ip-range", "10.0.0.0/8"], env=env, cwd=ROOT)
    env["SOFTHSM2_CONF"] = str(home / "softhsm/softhsm2.conf")
    config = home / "vpnca.toml"
    config.write_text(config.read_text() + "\n[ocsp]\npresign_every_seconds = 2\n")
    https_port, http_port = free_port(), free_port()
    log = home / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "vpnca.cli", "-v", "serve", "--workers", "2", "--https-port", str(https_port),
         "--http-port", str(http_port)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_port(https_port, process, log)
        wait_for_port(http_port, process, log)
        yield Server(home, env, process, https_port, http_port, log)
    finally:
        stop_process(process)


def vpnca(server: Server, *args: str) -> str:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=server.env, cwd=ROOT).stdout


def new_credential(server: Server, name: str) -> str:
    credential = vpnca(server, "token", "create", "--id", name, "--profile", "device").strip()
    remember_secret(credential.partition(":")[2])
    return credential



def client(server: Server) -> httpx.Client:
    """A keep-alive client: its one connection stays with the worker that accepted it."""
    return httpx.Client(verify=ssl.create_default_context(cafile=server.home / "ca/root.pem"), timeout=30)


def enroll(http: httpx.Client, server: Server, credential: str, body: bytes) -> httpx.Response:
    token_id, _, secret = credential.partition(":")
    return http.post(f"{server.est}/simpleenroll", content=body, auth=(token_id, secret),
                     headers={"Content-Type": "application/pkcs10"})


def issued(response: httpx.Response) -> x509.Certificate:
    assert response.status_code == 200, (response.status_code, response.text)
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.content))[0]


def ocsp_request(server: Server, cert: x509.Certificate, *, nonce: bool) -> bytes:
    sub = x509.load_pem_x509_certificate((server.home / "ca/sub.pem").read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, sub, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def post_ocsp(server: Server, body: bytes) -> ocsp.OCSPResponse:
    """One OCSP POST on a new connection; an HTTP error fails the test (urllib raises)."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/ocsp", data=body,
                                     headers={"Content-Type": "application/ocsp-request",
                                              "Connection": "close"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return ocsp.load_der_ocsp_response(response.read())


def wait_presigned(server: Server, serial: int, timeout: float = 60) -> None:
    """Until the scheduler has pre-signed an answer for `serial`."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(server.home / "vpnca.db") as db:
            if db.execute("SELECT 1 FROM ocsp_responses WHERE serial = ?", (format(serial, "x"),)).fetchone():
                return
        time.sleep(0.5)
    raise AssertionError(f"no pre-signed OCSP answer for {serial:x}")


def test_every_worker_signs_again_after_the_token_comes_back(server: Server) -> None:
    workers = workers_of(server.process.pid, 2)
    # two keep-alive connections: least-connections accepting puts them on different workers
    with client(server) as first, client(server) as second:
        for http in (first, second):
            assert http.get(f"{server.est}/cacerts").status_code == 200
        presigned = issued(enroll(first, server, new_credential(server, "pre.example.com"),
                                  est_csr_body("pre.example.com")))
        issued(enroll(second, server, new_credential(server, "ok.example.com"),
                      est_csr_body("ok.example.com")))
        wait_presigned(server, presigned.serial_number)
        assert post_ocsp(server, ocsp_request(server, presigned, nonce=False)).certificate_status == \
            ocsp.OCSPCertStatus.GOOD

        kept = {http: (new_credential(server, f"w{i}.example.com"), est_csr_body(f"w{i}.example.com"))
                for i, http in enumerate((first, second))}
        with TokenAway(server.token_dir) as token:
            for _ in range(3):  # the failing call, then reopening attempts that fail too
                for http, (credential, body) in kept.items():
                    refused = enroll(http, server, credential, body)
                    assert refused.status_code == 503, refused.text
                    assert refused.headers.get("retry-after")
                for _ in range(2):
                    answer = post_ocsp(server, ocsp_request(server, presigned, nonce=False))
                    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
                    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
                    live = post_ocsp(server, ocsp_request(server, presigned, nonce=True))
                    assert live.response_status == ocsp.OCSPResponseStatus.TRY_LATER
                time.sleep(0.4)
            token.back()

        time.sleep(1.5)  # reopening is tried at most once a second
        started = time.monotonic()
        # the same token and CSR as the refused attempts: the outage did not use the token up
        for http, (credential, body) in kept.items():
            issued(enroll(http, server, credential, body))
        for i in range(6):  # and new connections, each accepted by whichever worker is free
            with client(server) as fresh:
                issued(enroll(fresh, server, new_credential(server, f"after{i}.example.com"),
                              est_csr_body(f"after{i}.example.com")))
        for _ in range(6):
            answer = post_ocsp(server, ocsp_request(server, presigned, nonce=True))
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert time.monotonic() - started < 60
    assert workers_of(server.process.pid, 2) == workers, "a worker was restarted"
    log = server.log.read_text()
    back = {line for line in log.splitlines() if "is back" in line}
    pids = {json.loads(line).get("pid") for line in back if line.startswith("{")}
    assert len(back) >= 2 and (not pids or len(pids) >= 2), log[-3000:]
    assert log.count("Traceback") == 0, log[-3000:]


SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from hsm import HsmUnavailable, KeyNotFound, KeySpec, open_token
    from hsm.softhsm import init_softhsm_token
    from vpnca.issuer import token_key

    created = init_softhsm_token(Path(sys.argv[1]), "recovery")
    os.environ["SOFTHSM2_CONF"] = str(created.conf)
    token = open_token(created.module, "recovery", created.pin_file.read_text())
    token.generate(KeySpec("k", "ec-p256"))
    key = token_key(token, "k")
    results = {}

    def sign(name):
        try:
            key.sign(b"data", ec.ECDSA(hashes.SHA256()))
            results[name] = "ok"
        except HsmUnavailable as exc:
            results[name] = "unavailable"

    sign("before")
    directory = next(p for p in (Path(sys.argv[1]) / "tokens").iterdir())
    away = Path(sys.argv[1]) / "away"  # out of the token directory: SoftHSM finds any subdirectory there
    directory.rename(away)
    sign("away"); sign("away-again")
    away.rename(directory)
    sign("back-within-a-second")
    time.sleep(1.1)
    sign("back")
    generation = token.module.generation
    token.generate(KeySpec("doomed", "ec-p256"))
    doomed = token_key(token, "doomed")
    token.call(token.private_key("doomed").destroy)
    try:
        doomed.sign(b"data", ec.ECDSA(hashes.SHA256()))
    except HsmUnavailable:
        results["destroyed"] = "unavailable"
    try:
        doomed.sign(b"data", ec.ECDSA(hashes.SHA256()))
    except KeyNotFound:
        results["destroyed-again"] = "not found"
    sign("other key")
    results["reinitialised for a destroyed key"] = token.module.generation != generation
    print(json.dumps(results))
""")


def test_token_reopens_its_session_and_key_handles_by_itself(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    out = run([sys.executable, "-c", SCRIPT, str(tmp_path / "softhsm")], env=env, cwd=ROOT).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {
        "before": "ok", "away": "unavailable", "away-again": "unavailable",
        "back-within-a-second": "unavailable", "back": "ok",
        "destroyed": "unavailable", "destroyed-again": "not found", "other key": "ok",
        "reinitialised for a destroyed key": False,
    }
