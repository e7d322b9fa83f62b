"""A seeded corpus of bad inputs against a live `vpnca serve --workers 2`: every one gets its
protocol's error, never a 5xx; no worker dies; memory stays bounded; no traceback in the log.

Valid messages of each protocol (EST CSR, SCEP pkiMessage, ACME JWS, OCSP request) are made at test
time and then broken by seeded mutations (bit flips, truncation, insertion, length bytes, deep
nesting), beside hand-written malformed HTTP on raw sockets. The seed fixes which mutation lands
where; keys and signatures are fresh each run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from enrollment import scep
from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import remember_secret, run
from vpnca.authority import IssueRequest
from vpnca.identities import IkeIdentity

SEED = 20261127
CASES = {"est": 600, "scep": 500, "acme": 500, "ocsp": 450, "raw": 200}


@dataclass
class Case:
    family: str
    describe: str
    send: Callable[[], int | None]  # the HTTP status, or None when the server closed without one


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("corpus") / "home", softhsm)
    running = start_server(ca, "--workers", "2")
    yield running
    stop_server(running)
    ca.store.dispose()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded structural mutation of `data`."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    buf = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:  # flip a few bits
        for _ in range(rng.randrange(1, 9)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del buf[rng.randrange(len(buf)):]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    elif kind == 3:  # a DER length byte set to something large
        at = rng.randrange(min(len(buf), 64))
        buf[at] = rng.choice([0x81, 0x82, 0x83, 0x84, 0xFF, 0x80])
    elif kind == 4:  # duplicate a slice
        start = rng.randrange(len(buf))
        buf[start:start] = buf[start:start + rng.randrange(1, 200)]
    elif kind == 5:  # replace a tag
        buf[rng.randrange(len(buf))] = rng.choice([0x02, 0x03, 0x04, 0x05, 0x06, 0x30, 0x31, 0xA0, 0xA3])
    else:  # swap two halves
        mid = rng.randrange(len(buf))
        buf = buf[mid:] + buf[:mid]
    return bytes(buf)


def csr_der(name: str, seed: int) -> bytes:
    key = ec.derive_private_key(seed, ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def raw_http(port: int, payload: bytes, *, tls: bool = False, cafile: Path | None = None) -> int | None:
    """Send bytes as they are; the status of the answer, or None when the server closed without one."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        if tls:
            context = ssl.create_default_context(cafile=str(cafile))
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(payload)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, TimeoutError):
        return None
    finally:
        sock.close()
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


def worker_pids(server: RunningServer) -> set[int]:
    """The serve process's workers (spawned processes; not multiprocessing's resource tracker)."""
    pid = server.process.pid
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(p) for p in (task / "children").read_text().split()}
    return {p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def build_corpus(server: RunningServer, rng: random.Random, https: httpx.Client,
                 http: httpx.Client) -> list[Case]:
    ca = server.ca
    cases: list[Case] = []
    root = ca.home / "ca/root.pem"

    # -- EST ------------------------------------------------------------------------------------
    credential = _token(server, "corpus.example.com")
    basic = "Basic " + base64.b64encode(credential.encode()).decode()
    good_csr = csr_der("corpus.example.com", SEED)
    labels = ["", "device/", "gateway/", "nope/", "../", "device/../gateway/", "%00/", "a" * 300 + "/"]
    operations = ["simpleenroll", "simplereenroll", "serverkeygen", "csrattrs", "cacerts", "fullcmc", "x"]
    content_types = ["application/pkcs10", "application/pkcs10; charset=x", "text/plain", "",
                     "application/json", "multipart/form-data; boundary=" + "b" * 200]
    auths = [basic, "", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
             "Bearer x", "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), basic[:-4] + "AAAA"]
    for _ in range(CASES["est"]):
        body_kind = rng.randrange(5)
        if body_kind == 0:
            body = base64.encodebytes(mutate(good_csr, rng))
        elif body_kind == 1:
            body = mutate(base64.encodebytes(good_csr), rng)
        elif body_kind == 2:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000)))
        elif body_kind == 3:
            body = base64.b64encode(
                b"\x30\x82" + bytes(rng.randrange(256) for _ in range(rng.randrange(2, 400))))
        else:
            body = b"A" * rng.choice([0, 1, 17000, 70000])
        if rng.random() < 0.7:  # most cases reach the CSR parser: a real enrollment path and credential
            path = f"/.well-known/est/{rng.choice(['', 'device/'])}{rng.choice(operations[:3])}"
            method, headers = "POST", {"Content-Type": "application/pkcs10", "Authorization": basic}
        else:
            path = f"/.well-known/est/{rng.choice(labels)}{rng.choice(operations)}"
            method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE", "HEAD"])
            headers = {"Content-Type": rng.choice(content_types), "Authorization": rng.choice(auths)}
        if rng.random() < 0.1:
            headers["X-SSL-Client-Cert"] = rng.choice(["%%%", "-----BEGIN CERTIFICATE-----x", "a" * 5000])

        def send_est(method: str = method, path: str = path, body: bytes = body,
                     headers: dict[str, str] = headers) -> int:
            return https.request(method, path, content=body, headers=headers).status_code
        cases.append(Case("est", f"{method} {path} {len(body)}B", send_est))

    # -- SCEP -----------------------------------------------------------------------------------
    scep_credential = _token(server, "scep-corpus.example.com", "--protocol", "scep")
    ra = x509.load_pem_x509_certificate((ca.home / "ca/scep-ra.pem").read_bytes())
    client_key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scep-corpus.example.com")])
    now = datetime.now(UTC)
    signer = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(client_key.public_key()).serial_number(9)
              .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
              .sign(client_key, hashes.SHA256()))
    scep_csr = (x509.CertificateSigningRequestBuilder().subject_name(name)
                .add_attribute(x509.ObjectIdentifier(scep.OID_CHALLENGE_PASSWORD), scep_credential.encode())
                .sign(client_key, hashes.SHA256())).public_bytes(serialization.Encoding.DER)
    messages = {
        message_type: scep.signed_message(signer, client_key, message_type=message_type,
                                          transaction_id="corpus", sender_nonce=bytes(16),
                                          content=scep.envelope(content, ra))
        for message_type, content in [(scep.PKCS_REQ, scep_csr), (scep.RENEWAL_REQ, scep_csr),
                                      (scep.CERT_POLL, b"\x30\x00"), (scep.GET_CERT, b"\x04\x02ab"),
                                      (scep.GET_CRL, b"\x30\x03\x02\x01\x01")]
    }
    for i in range(CASES["scep"]):
        message = mutate(rng.choice(list(messages.values())), rng)
        choice = rng.randrange(4)
        if choice == 0:
            def send_scep(message: bytes = message) -> int:
                return http.post("/scep", params={"operation": "PKIOperation"}, content=message,
                                 headers={"Content-Type": "application/x-pki-message"}).status_code
        elif choice == 1:
            def send_scep(message: bytes = message) -> int:
                return http.get("/scep", params={"operation": "PKIOperation",
                                                 "message": base64.b64encode(message).decode()}).status_code
        elif choice == 2:
            operation = rng.choice(["GetCACaps", "GetCACert", "GetNextCACert", "", "PKIOperation", "x" * 500])

            def send_operation(operation: str = operation, message: bytes = message) -> int:
                return http.get("/scep", params={"operation": operation,
                                                 "message": b64url(message[:200])}).status_code
            cases.append(Case("scep", f"scep #{i}", send_operation))
            continue
        else:
            def send_scep(message: bytes = message) -> int:
                return http.post("/scep", params={"operation": rng.choice(["PKIOperation", "GetCACert"])},
                                 content=message[: rng.randrange(1, 40)]).status_code
        cases.append(Case("scep", f"scep #{i}", send_scep))

    # -- ACME -----------------------------------------------------------------------------------
    directory = https.get("/acme/directory").json()
    account_key = ec.derive_private_key(SEED + 1, ec.SECP256R1())
    numbers = account_key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big")),
           "y": b64url(numbers.y.to_bytes(32, "big"))}
    endpoints = [directory["newAccount"], directory["newOrder"], directory.get("revokeCert", ""),
                 directory.get("keyChange", ""), f"{directory['newAccount'].rsplit('/', 1)[0]}/acct/1",
                 f"{directory['newAccount'].rsplit('/', 1)[0]}/order/x/finalize"]
    payloads = [json.dumps({"termsOfServiceAgreed": True}), deep(1000), deep(40), "{" * 5000,
                json.dumps({"identifiers": [{"type": "dns", "value": "x" * 5000}]}),
                json.dumps({"identifiers": "not-a-list"}), json.dumps({"csr": "!!!"}), "", "null", "1e999999",
                json.dumps({"contact": [None, 1, {"a": deep(900)}]}), '{"a":' * 3000 + "1" + "}" * 3000]
    for _ in range(CASES["acme"]):
        url = rng.choice([e for e in endpoints if e])
        protected = {"alg": rng.choice(["ES256", "RS256", "none", "HS256", "ES999", ""]),
                     "nonce": b64url(os.urandom(16)), "url": url,
                     rng.choice(["jwk", "kid"]): rng.choice([jwk, "http://x/acct/1", deep(700), None])}
        protected_text = json.dumps(protected) if rng.random() < 0.7 else rng.choice(payloads)
        body_obj = {"protected": b64url(protected_text.encode()),
                    "payload": b64url(rng.choice(payloads).encode()),
                    "signature": b64url(os.urandom(rng.choice([0, 64, 512])))}
        body = json.dumps(body_obj).encode()
        if rng.random() < 0.3:
            body = mutate(body, rng)
        content_type = rng.choice(["application/jose+json", "application/jose+json", "application/json",
                                   "text/x"])
        path = httpx.URL(url).path

        def send_acme(path: str = path, body: bytes = body, content_type: str = content_type) -> int:
            return https.post(path, content=body, headers={"Content-Type": content_type}).status_code
        cases.append(Case("acme", f"acme {path}", send_acme))

    # -- OCSP -----------------------------------------------------------------------------------
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.authority.issue(IssueRequest(profile="device",
                                             identities=(IkeIdentity.parse("ocsp-corpus.example.com"),),
                                             public_key=key.public_key(), requester="corpus"))
    good_ocsp = (ocsp.OCSPRequestBuilder()
                 .add_certificate(issued.certificate, ca.authority.certificate, hashes.SHA1())
                 .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False).build()
                 .public_bytes(serialization.Encoding.DER))
    plain_ocsp = (ocsp.OCSPRequestBuilder().add_certificate(issued.certificate, ca.authority.certificate,
                                                            hashes.SHA256()).build().public_bytes(serialization.Encoding.DER))
    for i in range(CASES["ocsp"]):
        request = mutate(rng.choice([good_ocsp, plain_ocsp]), rng)
        if rng.random() < 0.6:
            content_type = rng.choice(["application/ocsp-request", "application/ocsp-request", "text/plain",
                                       ""])

            def send_ocsp(request: bytes = request, content_type: str = content_type) -> int:
                return http.post("/ocsp", content=request, headers={"Content-Type": content_type}).status_code
        else:
            encoded = rng.choice([base64.b64encode(request).decode(), b64url(request), "%%%", "A" * 20000])

            def get_ocsp(encoded: str = encoded) -> int:
                return http.get(f"/ocsp/{encoded}").status_code
            cases.append(Case("ocsp", f"ocsp #{i}", get_ocsp))
            continue
        cases.append(Case("ocsp", f"ocsp #{i}", send_ocsp))

    # -- raw HTTP on both listeners -------------------------------------------------------------
    templates = [
        b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\xff" + bytes(200), b"GET\r\n\r\n", b"\r\n\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"GET /crl/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", b"BREW /ocsp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ocsp/" + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 12000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n: novalue\r\n\r\n",
        b"GET /\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for i in range(CASES["raw"]):
        payload = (templates[i % len(templates)] if i < len(templates) * 2
                   else mutate(rng.choice(templates), rng))
        tls = i % 2 == 1

        def send_raw(payload: bytes = payload, tls: bool = tls) -> int | None:
            return raw_http(server.https_port if tls else server.http_port, payload, tls=tls, cafile=root)
        cases.append(Case("raw", f"raw {'https' if tls else 'http'} #{i}", send_raw))
    return cases


def _token(server: RunningServer, identity: str, *extra: str) -> str:
    credential = run([sys.executable, "-m", "vpnca.cli", "token", "create", "--id", identity, *extra],
                     env=server.ca.env).stdout.strip()
    remember_secret(credential.partition(":")[2])
    return credential


def test_bad_input_corpus_gets_protocol_errors_and_no_5xx(server: RunningServer) -> None:
    rng = random.Random(SEED)
    trust = ssl.create_default_context(cafile=str(server.ca.home / "ca/root.pem"))
    with httpx.Client(base_url=f"https://localhost:{server.https_port}", verify=trust, timeout=30) as https, \
            httpx.Client(base_url=server.http, timeout=30) as http:
        cases = build_corpus(server, rng, https, http)
        assert len(cases) >= 2000
        workers = worker_pids(server)
        assert len(workers) == 2
        for case in cases[:50]:  # warm up: first-use allocations are not growth
            case.send()
        rss_before = rss_kib(workers | {server.process.pid})
        statuses: Counter[tuple[str, int | None]] = Counter()
        server_errors = []
        dropped = []
        for case in cases:
            try:
                status = case.send()
            except httpx.TransportError as exc:  # the server closed the connection without an answer
                status = None
                dropped.append((case.describe, repr(exc)))
            statuses[(case.family, status)] += 1
            if status is not None and status >= 500:
                server_errors.append((case.family, case.describe))
        rss_after = rss_kib(workers | {server.process.pid})
        assert not server_errors, (Counter(f for f, _ in server_errors), server_errors[:20])
        print("dropped without an answer:", dropped[:20], len(dropped))
        assert worker_pids(server) == workers, "a worker died and was replaced"
        assert server.process.poll() is None
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
        # the server still does its job
        assert https.get("/.well-known/est/cacerts").status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log, log[-5000:]
    print(sorted(statuses.items(), key=str))


def test_aborted_uploads_are_the_clients_doing(server: RunningServer) -> None:
    """A client that closes mid-body gets no answer and costs one INFO line, no ERROR, no traceback."""
    credential = base64.b64encode(_token(server, "aborted.example.com").encode()).decode()
    before = server.log.read_text()
    targets = [(server.https_port, True, "/.well-known/est/simpleenroll", "application/pkcs10"),
               (server.https_port, True, "/acme/new-account", "application/jose+json"),
               (server.http_port, False, "/scep?operation=PKIOperation", "application/x-pki-message"),
               (server.http_port, False, "/ocsp", "application/ocsp-request")]
    for port, tls, path, content_type in targets:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            context = ssl.create_default_context(cafile=str(server.ca.home / "ca/root.pem"))
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                     f"Authorization: Basic {credential}\r\nContent-Length: 1000\r\n\r\n".encode()
                     + b"0123456789")
        time.sleep(0.2)
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        added = server.log.read_text()[len(before):]
        if added.count("closed the connection") >= len(targets):
            break
        time.sleep(0.1)
    added = server.log.read_text()[len(before):]
    assert added.count("closed the connection") >= len(targets), added
    assert "Traceback" not in added and '"level":"error"' not in added.replace(" ", ""), added
