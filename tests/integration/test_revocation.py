"""CRLs and OCSP against a running `vpnca serve` and a standalone `vpnca ocsp serve`, with openssl."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from tests.conftest import CaHome, RunningServer, make_ca_home, stop_server, wait_for_port
from tests.helpers import free_port, require_tool, run
from vpnca.authority import IssueRequest
from vpnca.crl import generate_crl
from vpnca.identities import IkeIdentity


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    from tests.conftest import start_server

    ca = make_ca_home(tmp_path_factory.mktemp("revocation") / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text() + "\n[crl]\ndelta = true\n")
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def vpnca(ca: CaHome, *args: str) -> str:
    return run([sys.executable, "-m", "vpnca.cli", *args], env=ca.env).stdout


def issue(ca: CaHome, tmp_path: Path, name: str) -> tuple[Path, str]:
    pem = tmp_path / f"{name}.pem"
    serial = vpnca(ca, "issue", "--profile", "device", "--id", f"{name}.example.com", "--out", str(pem),
                   "--key-out", str(tmp_path / f"{name}.key")).strip()
    return pem, serial


def openssl_ocsp(server: RunningServer, leaf: Path, *extra: str, port: int | None = None) -> str:
    ca = server.ca.home / "ca"
    result = run([require_tool("openssl"), "ocsp", "-issuer", str(ca / "sub.pem"), "-cert", str(leaf),
                  "-url", f"http://127.0.0.1:{port or server.http_port}/ocsp",
                  "-CAfile", str(ca / "root.pem"), *extra])
    return result.stdout + result.stderr


def post_ocsp(server: RunningServer, body: bytes, port: int | None = None) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port or server.http_port}/ocsp", data=body,
                                     headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        answer: bytes = response.read()
        return answer


SHA1 = hashes.SHA1()  # OCSP's customary CertID hash (a default argument, shared: hash objects are immutable)


def ocsp_request(leaf: Path, issuer: Path, algorithm: hashes.HashAlgorithm = SHA1) -> bytes:
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    ca = x509.load_pem_x509_certificate(issuer.read_bytes())
    return ocsp.OCSPRequestBuilder().add_certificate(cert, ca, algorithm).build().public_bytes(
        serialization.Encoding.DER)


def test_openssl_ocsp_good_then_revoked_with_nonce_and_reason(server: RunningServer, tmp_path: Path) -> None:
    leaf, serial = issue(server.ca, tmp_path, "ocsp1")
    out = openssl_ocsp(server, leaf)  # openssl sends a nonce by default and checks it
    assert "Response verify OK" in out and f"{leaf}: good" in out and "WARNING: no nonce" not in out
    vpnca(server.ca, "revoke", serial, "--reason", "keyCompromise")
    out = openssl_ocsp(server, leaf, "-no_nonce")
    assert "Response verify OK" in out and f"{leaf}: revoked" in out and "Reason: keyCompromise" in out


def test_presigned_answer_is_served_without_signing_and_get_is_cacheable(server: RunningServer,
                                                                         tmp_path: Path) -> None:
    leaf, serial = issue(server.ca, tmp_path, "ocsp2")
    vpnca(server.ca, "revoke", serial, "--reason", "superseded")  # re-signs this serial at once
    request = ocsp_request(leaf, server.ca.home / "ca/sub.pem")
    first, second = post_ocsp(server, request), post_ocsp(server, request)
    assert first == second  # the same pre-signed bytes, not a fresh signature
    parsed = ocsp.load_der_ocsp_response(first)
    assert parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert parsed.revocation_reason == x509.ReasonFlags.superseded
    encoded = urllib.parse.quote(base64.b64encode(request).decode(), safe="")
    with urllib.request.urlopen(f"{server.http}/ocsp/{encoded}", timeout=30) as response:
        assert response.read() == first
        assert "max-age=" in response.headers["Cache-Control"]
    get = run([require_tool("openssl"), "ocsp", "-issuer", str(server.ca.home / "ca/sub.pem"),
               "-cert", str(leaf), "-url", f"{server.http}/ocsp",
               "-CAfile", str(server.ca.home / "ca/root.pem"), "-no_nonce",
               "-reqout", str(tmp_path / "req.der")])
    assert "revoked" in get.stdout


def test_sha256_certid_and_several_certids_in_one_request(server: RunningServer, tmp_path: Path) -> None:
    good, _ = issue(server.ca, tmp_path, "multi1")
    bad, bad_serial = issue(server.ca, tmp_path, "multi2")
    vpnca(server.ca, "revoke", bad_serial, "--reason", "cessationOfOperation")
    sub = server.ca.home / "ca/sub.pem"
    response = ocsp.load_der_ocsp_response(post_ocsp(server, ocsp_request(good, sub, hashes.SHA256())))
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD and isinstance(response.hash_algorithm,
                                                                                    hashes.SHA256)
    out = run([require_tool("openssl"), "ocsp", "-issuer", str(sub), "-cert", str(good), "-cert", str(bad),
               "-url", f"{server.http}/ocsp", "-CAfile", str(server.ca.home / "ca/root.pem")])
    text = out.stdout + out.stderr
    assert f"{good}: good" in text and f"{bad}: revoked" in text and "Response verify OK" in text


def test_unknown_serial_and_unknown_issuer(server: RunningServer, tmp_path: Path) -> None:
    leaf, _ = issue(server.ca, tmp_path, "ghost")
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    sub = x509.load_pem_x509_certificate((server.ca.home / "ca/sub.pem").read_bytes())
    root = x509.load_pem_x509_certificate((server.ca.home / "ca/root.pem").read_bytes())
    unknown = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *_hashes_of(sub), 0xDEADBEEF, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)
    unknown_answer = ocsp.load_der_ocsp_response(post_ocsp(server, unknown))
    assert unknown_answer.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    foreign = ocsp.OCSPRequestBuilder().add_certificate(cert, root, hashes.SHA1()).build().public_bytes(
        serialization.Encoding.DER)
    assert ocsp.load_der_ocsp_response(post_ocsp(server, foreign)).response_status == \
        ocsp.OCSPResponseStatus.UNAUTHORIZED


def _hashes_of(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    from ocsp.responses import IssuerHashes

    return IssuerHashes.of(issuer).by_algorithm["sha1"]


@pytest.mark.parametrize("body", [b"", b"\x30\x82\x01", os.urandom(200), b"\x30" + b"\xff" * 64,
                                  b"A" * 1_000_000],
                         ids=["empty", "truncated", "random", "bad-length", "1MB"])
def test_bad_ocsp_input_gets_malformed_request_and_the_responder_keeps_serving(
        server: RunningServer, tmp_path: Path, body: bytes) -> None:
    answer = ocsp.load_der_ocsp_response(post_ocsp(server, body))
    assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    with urllib.request.urlopen(f"{server.http}/ocsp/%%%notbase64", timeout=30) as response:
        assert ocsp.load_der_ocsp_response(response.read()).response_status == \
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    leaf, _ = issue(server.ca, tmp_path, "alive")
    assert ": good" in openssl_ocsp(server, leaf)
    assert "Traceback" not in server.log.read_text()


def test_oversized_nonce_is_malformed(server: RunningServer, tmp_path: Path) -> None:
    leaf, _ = issue(server.ca, tmp_path, "nonce")
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    sub = x509.load_pem_x509_certificate((server.ca.home / "ca/sub.pem").read_bytes())
    request = (ocsp.OCSPRequestBuilder().add_certificate(cert, sub, hashes.SHA1())
               .add_extension(x509.OCSPNonce(os.urandom(64)), critical=False).build())
    answer = ocsp.load_der_ocsp_response(post_ocsp(server, request.public_bytes(serialization.Encoding.DER)))
    assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_crl_check_with_openssl_and_http_caching(server: RunningServer, tmp_path: Path) -> None:
    ca = server.ca
    good, _ = issue(ca, tmp_path, "crlgood")
    bad, bad_serial = issue(ca, tmp_path, "crlbad")
    vpnca(ca, "revoke", bad_serial, "--reason", "keyCompromise", "--invalidity-date", "2026-11-01T10:00:00Z")
    _, held_serial = issue(ca, tmp_path, "crlheld")
    vpnca(ca, "revoke", held_serial, "--reason", "certificateHold")
    # with delta CRLs configured, a revocation publishes a delta at once; this is the full one
    vpnca(ca, "crl")
    crl_path = tmp_path / "sub.crl"
    url = f"{server.http}/crl/{ca.settings.ca.name}.crl"
    with urllib.request.urlopen(url, timeout=30) as response:
        crl_path.write_bytes(response.read())
        etag, last_modified = response.headers["ETag"], response.headers["Last-Modified"]
        assert "max-age=" in response.headers["Cache-Control"]
    pem = tmp_path / "sub.crl.pem"
    run([require_tool("openssl"), "crl", "-inform", "DER", "-in", str(crl_path), "-out", str(pem)])
    chain = ["-CAfile", str(ca.home / "ca/root.pem"), "-untrusted", str(ca.home / "ca/sub.pem"),
             "-crl_check", "-CRLfile", str(pem)]
    openssl = require_tool("openssl")
    assert run([openssl, "verify", *chain, str(good)]).stdout.strip().endswith("OK")
    refused = run([openssl, "verify", *chain, str(bad)], check=False)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    text = run([openssl, "crl", "-in", str(pem), "-noout", "-text"]).stdout
    for field in ("X509v3 CRL Number", "X509v3 Authority Key Identifier", "Issuing Distribution Point",
                  "Key Compromise", "Invalidity Date", "Certificate Hold", bad_serial.upper()):
        assert field in text, field
    for header in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
        request = urllib.request.Request(url, headers=header)
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(request, timeout=30)
        assert not_modified.value.code == 304
    # release from hold: listed as removeFromCRL in the delta published at once, gone from the next full CRL
    vpnca(ca, "crl")
    vpnca(ca, "release", held_serial)
    delta = x509.load_der_x509_crl((ca.home / "crl" / f"{ca.settings.ca.name}-delta.crl").read_bytes())
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number >= 1
    released = delta.get_revoked_certificate_by_serial_number(int(held_serial, 16))
    assert released is not None
    reason = released.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.remove_from_crl
    vpnca(ca, "crl")
    crl = x509.load_der_x509_crl((ca.home / "crl" / f"{ca.settings.ca.name}.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(held_serial, 16)) is None
    assert crl.get_revoked_certificate_by_serial_number(int(bad_serial, 16)) is not None


def test_standalone_ocsp_responder_without_ca_key(server: RunningServer, tmp_path: Path) -> None:
    """`vpnca ocsp serve --presigned-only`: same database, no key at all, pre-signed answers."""
    leaf, serial = issue(server.ca, tmp_path, "standalone")
    vpnca(server.ca, "revoke", serial, "--reason", "affiliationChanged")
    port = free_port()
    log = tmp_path / "ocsp.log"
    env = {**server.ca.env, "VPNCA_PIN": "wrong", "VPNCA_PIN_FILE": ""}
    process = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port),
                                "--presigned-only"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        out = openssl_ocsp(server, leaf, "-no_nonce", port=port)
        assert f"{leaf}: revoked" in out and "Response verify OK" in out
        out = openssl_ocsp(server, leaf, port=port)  # asks for a nonce: answered pre-signed, without it
        assert f"{leaf}: revoked" in out and "WARNING: no nonce in response" in out
        empty = ocsp.load_der_ocsp_response(post_ocsp(server, b"", port=port))
        assert empty.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        # GET with curl, twice on one connection: the second reply is the remembered one, byte for byte,
        # and openssl reads it as the revoked answer
        encoded = urllib.parse.quote(base64.b64encode(ocsp_request(leaf, server.ca.home / "ca/sub.pem"))
                                     .decode(), safe="")
        url = f"http://127.0.0.1:{port}/ocsp/{encoded}"
        first, second = tmp_path / "get1.der", tmp_path / "get2.der"
        run([require_tool("curl"), "-sSf", url, "-o", str(first), "--next", "-sSf", url, "-o", str(second)])
        assert first.read_bytes() == second.read_bytes()
        text = run([require_tool("openssl"), "ocsp", "-respin", str(second), "-resp_text",
                    "-noverify"]).stdout
        assert "Cert Status: revoked" in text and "Reason: affiliationChanged" in text
        remembered_replies_keep_http_semantics(port, f"/ocsp/{encoded}".encode(), first.read_bytes())
    finally:
        stop_server(RunningServer(server.ca, 0, port, process, log))


def remembered_replies_keep_http_semantics(port: int, path: bytes, answer: bytes) -> None:
    """Raw HTTP against a responder that remembers `path`'s reply: pipelined requests, Connection:
    close and HTTP/1.0 are answered as before, and every remembered answer reaches the metrics."""
    def count() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.findall(r'vpnca_ocsp_requests_total\{answer="presigned"\} (\S+)', text)
        return sum(float(n) for n in found)

    def exchange(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(data)
            if b"close" not in data and b"HTTP/1.0" not in data:
                conn.shutdown(socket.SHUT_WR)  # keep-alive: the server answers, then sees the end
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        return received

    before = count()
    plain = b"GET " + path + b" HTTP/1.1\r\nHost: ocsp\r\n\r\n"
    replies = exchange(plain * 3)  # three pipelined in one write: all answered, in order
    assert replies.count(b"HTTP/1.1 200 OK") == 3 and replies.count(answer) == 3
    closing = exchange(b"GET " + path + b" HTTP/1.1\r\nHost: ocsp\r\nConnection: close\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in closing and closing.endswith(answer)  # and the server closed
    old = exchange(b"GET " + path + b" HTTP/1.0\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in old and old.endswith(answer)
    for _ in range(5):
        assert exchange(plain).endswith(answer)  # one request per connection, the fast path
    assert count() - before == 3 + 1 + 1 + 5


def test_root_crl_covers_the_sub_ca_and_full_chain_crl_checking_passes(server: RunningServer,
                                                                       tmp_path: Path) -> None:
    ca = server.ca
    leaf, _ = issue(ca, tmp_path, "chaincheck")
    sub = x509.load_pem_x509_certificate((ca.home / "ca/sub.pem").read_bytes())
    cdp = sub.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == ca.settings.root_crl_url
    vpnca(ca, "crl", "--root")
    crls: list[Path] = []
    for url in (ca.settings.root_crl_url, f"{server.http}/crl/{ca.settings.ca.name}.crl"):
        path = url.replace(ca.settings.http_base_url, server.http)
        with urllib.request.urlopen(path, timeout=30) as response:
            pem = tmp_path / f"{len(crls)}.crl.pem"
            der = tmp_path / f"{len(crls)}.crl"
            der.write_bytes(response.read())
            run([require_tool("openssl"), "crl", "-inform", "DER", "-in", str(der), "-out", str(pem)])
            crls.append(pem)
    root_crl = x509.load_pem_x509_crl(crls[0].read_bytes())
    assert root_crl.is_signature_valid(
        x509.load_pem_x509_certificate((ca.home / "ca/root.pem").read_bytes()).public_key())  # type: ignore[arg-type]
    result = run([require_tool("openssl"), "verify", "-crl_check_all",
                  "-CAfile", str(ca.home / "ca/root.pem"), "-untrusted", str(ca.home / "ca/sub.pem"),
                  "-CRLfile", str(crls[0]), "-CRLfile", str(crls[1]), str(leaf)])
    assert result.stdout.strip().endswith("OK")


def test_revocation_is_recorded_without_the_token_and_published_by_the_next_presign_run(
        server: RunningServer, tmp_path: Path) -> None:
    from vpnca.revocation import Publisher

    ca = server.ca
    leaf, serial = issue(ca, tmp_path, "offline")
    Publisher(ca.authority).presign_backlog()
    assert f"{leaf}: good" in openssl_ocsp(server, leaf, "-no_nonce")
    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("0000")
    result = run([sys.executable, "-m", "vpnca.cli", "revoke", serial, "--reason", "keyCompromise"],
                 env={**ca.env, "VPNCA_PIN_FILE": str(wrong_pin)})
    assert "revoked" in result.stdout and "not yet published" in result.stderr
    assert ca.store.get_certificate(serial).status == "revoked"  # type: ignore[union-attr]
    assert f"{leaf}: good" in openssl_ocsp(server, leaf, "-no_nonce")  # the old answer, until re-signed
    assert ca.store.count_ocsp_backlog(ca.settings.ca.name, datetime.now(UTC)) >= 1
    Publisher(ca.authority).presign_backlog()  # what the scheduler's next run does
    assert f"{leaf}: revoked" in openssl_ocsp(server, leaf, "-no_nonce")


def test_an_expired_revoked_certificate_leaves_the_crl_after_one_crl_beyond_its_validity(
        ca_home: CaHome) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca_home.authority.issue(IssueRequest(
        profile="device", identities=(IkeIdentity.parse("short.example.com"),), public_key=key.public_key(),
        requester="t", lifetime=timedelta(hours=1)))
    ca_home.authority.revoke(issued.serial, "keyCompromise", actor="t")
    expiry = issued.certificate.not_valid_after_utc
    serial = int(issued.serial, 16)

    def listed(crl: x509.CertificateRevocationList) -> bool:
        return crl.get_revoked_certificate_by_serial_number(serial) is not None

    now = datetime.now(UTC)
    assert listed(generate_crl(ca_home.authority, now=now).crl)  # still valid: listed
    beyond = generate_crl(ca_home.authority, now=expiry + timedelta(hours=1)).crl
    assert listed(beyond)  # the first CRL issued beyond its validity still lists it
    assert not listed(generate_crl(ca_home.authority, now=expiry + timedelta(hours=2)).crl)  # then it goes



def test_a_remembered_get_reply_turns_revoked_at_once(server: RunningServer, tmp_path: Path) -> None:
    """The standalone responder's HTTP layer remembers whole GET replies (for up to 30 s, their max-age
    that much shorter); a revocation re-signs the answer and the very next GET says revoked."""
    from ocsp.httpserver import REPLY_MEMO_SECONDS, Responder
    from ocsp.service import load_ocsp_service
    from vpnca.authority import Register

    leaf, serial = issue(server.ca, tmp_path, "remembered")
    service = load_ocsp_service(server.ca.settings, server.ca.store)
    service.presign_backlog()
    responder = Responder(service)
    encoded = urllib.parse.quote(base64.b64encode(ocsp_request(leaf, server.ca.home / "ca/sub.pem")).decode(),
                                 safe="")
    path = f"/ocsp/{encoded}".encode()

    def get() -> ocsp.OCSPResponse:
        reply = responder.handle(b"GET", path, {}, b"")
        assert isinstance(reply, tuple) and reply[0] == 200
        return ocsp.load_der_ocsp_response(reply[2])

    good = get()
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert path in responder._replies  # the next GET is answered from the remembered reply
    headers = dict(responder._replies[path].reply[1])
    max_age = int(re.search(rb"max-age=(\d+)", headers[b"cache-control"]).group(1))  # type: ignore[union-attr]
    assert good.next_update_utc is not None  # written at any moment of its memo, never cached past nextUpdate
    assert datetime.now(UTC) + timedelta(seconds=max_age + REPLY_MEMO_SECONDS) <= good.next_update_utc
    assert get().certificate_status == ocsp.OCSPCertStatus.GOOD
    # its time up, a remembered reply of the same answer is renewed (fresh headers, the same answer) ...
    aged = dataclasses.replace(responder._replies[path], until=time.monotonic() - 1)
    responder._replies[path] = aged
    assert get().certificate_status == ocsp.OCSPCertStatus.GOOD
    renewed = responder._replies[path]
    assert renewed is not aged and renewed.body is aged.body and renewed.until > time.monotonic()
    # ... but never past the answer's nextUpdate: then the full path answers, and nothing is remembered
    responder._replies[path] = dataclasses.replace(renewed, until=0.0, next_update=datetime.now(UTC))
    assert responder.remembered(path) is None and path not in responder._replies
    Register(server.ca.store).revoke(serial, "keyCompromise", actor="test")
    service.presign_backlog()  # re-signs the revoked certificate's answer, as a revoke's publication does
    revoked = get()
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
