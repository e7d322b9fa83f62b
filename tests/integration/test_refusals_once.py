"""One refusal, one log event, one metric sample, whatever the protocol; the client gets a fixed text
and the correlation id of that event, never the exception's text. Against a running `vpnca serve`
with real clients: curl for EST, urllib with hand-built pkiMessages for SCEP, the `acme` library."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from acme import crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID
from fastapi import FastAPI

from enrollment import scep
from enrollment.acme.renewal_info import cert_id_of
from enrollment.acme.routes import make_router as acme_router
from enrollment.acme.service import AcmeService
from enrollment.est import EstContext, make_app
from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import est_csr_body, remember_secret, require_tool, run, scep_post, scep_status
from tests.integration.acme_peers import Http01Server, LoopbackDns, acme_peers
from tests.integration.test_acme import (
    GATEWAY,
    LOOPBACK_IP,
    account_key,
    acme_client,
    answer,
    configure_acme,
    deadline,
    eab_create,
    new_csr,
    register,
)
from vpnca.authority import IssuedCertificate, IssueRequest
from vpnca.credentials import Requester, create_token
from vpnca.enroll import Enrollment
from vpnca.identities import IkeIdentity
from vpnca.ports import CaDoor
from vpnca.store import CertificateRecord

REFUSAL_EVENTS = ("issuance.refused", "enrollment.refused", "authentication.failed", "acme.refused")


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[LoopbackDns, Http01Server]]:
    with acme_peers() as (dns_server, http_server):
        dns_server.records[(GATEWAY, "A")] = [LOOPBACK_IP]
        yield dns_server, http_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm, peers) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("refusals") / "home", softhsm)
    configure_acme(ca, *peers)
    config = ca.home / "vpnca.toml"  # gateway certificates need an operator's approval; ACME without EAB
    config.write_text(config.read_text().replace(
        "[profiles.gateway]\nlifetime_days = 30", "[profiles.gateway]\nlifetime_days = 30\napproval = true")
        .replace("\n[acme]\n", "\n[acme]\nexternal_account_required = false\n"))
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def token(server: RunningServer, identity: str, protocol: str) -> str:
    credential = run([sys.executable, "-m", "vpnca.cli", "token", "create", "--protocol", protocol,
                      "--id", identity], env=server.ca.env).stdout.strip()
    remember_secret(credential.partition(":")[2])
    return credential


def refused_samples(server: RunningServer, protocol: str) -> float:
    """Every vpnca_requests_refused_total sample of `protocol`, whatever its reason and profile."""
    text = urllib.request.urlopen(f"{server.http}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("vpnca_requests_refused_total{") and f'protocol="{protocol}"' in line)


def events(server: RunningServer) -> list[dict[str, Any]]:
    lines = (server.ca.home / "log/vpnca.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") in REFUSAL_EVENTS]


class Watch:
    """The refusal samples and events of one protocol from now on."""

    def __init__(self, server: RunningServer, protocol: str) -> None:
        self.server, self.protocol = server, protocol
        self.samples = refused_samples(server, protocol)
        self.seen = len(events(server))

    def new_events(self) -> list[dict[str, Any]]:
        return events(self.server)[self.seen:]

    def assert_one_refusal(self, reason: str) -> dict[str, Any]:
        assert refused_samples(self.server, self.protocol) == self.samples + 1
        (event,) = self.new_events()
        assert (event["event"], event["protocol"], event["reason"]) == ("issuance.refused", self.protocol,
                                                                         reason)
        return event


def rsa_1024_csr(name: str, challenge: str | None = None) -> tuple[rsa.RSAPrivateKey,
                                                                    x509.CertificateSigningRequest]:
    key = rsa.generate_private_key(65537, 1024)
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return key, builder.sign(key, hashes.SHA256())


def curl_est(server: RunningServer, credential: str, csr: x509.CertificateSigningRequest,
             tmp_path: Path) -> tuple[int, bytes, str]:
    body = tmp_path / "csr.b64"
    body.write_bytes(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))
    out, headers = tmp_path / "est.out", tmp_path / "est.headers"
    result = subprocess.run(
        [require_tool("curl"), "-sS", "--cacert", str(server.ca.home / "ca/root.pem"), "-o", str(out),
         "-D", str(headers), "-w", "%{http_code}", "-u", credential, "-H", "Content-Type: application/pkcs10",
         "--data-binary", f"@{body}", f"{server.est}/simpleenroll"],
        capture_output=True, text=True, timeout=60, check=True)
    return int(result.stdout), out.read_bytes(), headers.read_text().lower()


def challenge_csr(key: rsa.RSAPrivateKey, name: str, challenge: str) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode()).sign(key, hashes.SHA256()))


def scep_request(server: RunningServer, key: rsa.RSAPrivateKey, csr: x509.CertificateSigningRequest,
                 transaction_id: str) -> tuple[int, bytes]:
    """A PKCSReq signed by the requested key (self-signed, as a first enrollment is), over HTTP POST."""
    now = datetime.now(UTC)
    signer = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(csr.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
              .sign(key, hashes.SHA256()))
    ra = x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())
    message = scep.signed_message(signer, key, message_type=scep.PKCS_REQ, transaction_id=transaction_id,
                                  sender_nonce=os.urandom(16),
                                  content=scep.envelope(csr.public_bytes(serialization.Encoding.DER), ra))
    return scep_post(f"{server.http}/scep", message)


def test_rsa_1024_csr_refused_by_est_scep_and_acme_is_one_sample_and_one_event_each(
        server: RunningServer, peers: tuple[LoopbackDns, Http01Server], tmp_path: Path) -> None:
    before = server.ca.store.count_by_status()

    watch = Watch(server, "est")
    _, csr = rsa_1024_csr("weak-est.example.com")
    status, body, headers = curl_est(server, token(server, "weak-est.example.com", "est"), csr, tmp_path)
    assert status == 403
    event = watch.assert_one_refusal("policy")
    assert "1024" in event["detail"] and b"1024" not in body
    assert body == f"the request violates the CA's policy (id {event['error_id']})\n".encode()
    assert f"x-request-id: {event['error_id']}" in headers

    watch = Watch(server, "scep")
    key, csr = rsa_1024_csr("weak-scep.example.com", token(server, "weak-scep.example.com", "scep"))
    status, reply = scep_request(server, key, csr, "weak-1")
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert "1024" in watch.assert_one_refusal("policy")["detail"]

    acme = register(server, account_key(), eab_create(server.ca, GATEWAY))
    weak_key = rsa.generate_private_key(65537, 1024)
    weak_pem = weak_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(weak_pem, [GATEWAY]))
    answer(acme, order, peers)
    order = acme.poll_authorizations(order, deadline())
    watch = Watch(server, "acme")
    with pytest.raises(messages.Error) as refused:
        acme.begin_finalization(order)
    assert refused.value.code == "badCSR"
    event = watch.assert_one_refusal("policy")
    assert "1024" in event["detail"] and "1024" not in str(refused.value.detail)
    assert event["error_id"] in str(refused.value.detail)

    assert server.ca.store.count_by_status() == before  # nothing reserved, nothing signed


def test_scep_answers_a_spent_challenge_with_a_failure_certrep_not_a_500(server: RunningServer) -> None:
    challenge = token(server, "spent.example.com", "scep")
    key = rsa.generate_private_key(65537, 2048)
    status, reply = scep_request(server, key, challenge_csr(key, "spent.example.com", challenge), "spent-1")
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None)
    other_key = rsa.generate_private_key(65537, 2048)  # the spent challenge with another key
    again = challenge_csr(other_key, "spent.example.com", challenge)
    watch = Watch(server, "scep")
    status, reply = scep_request(server, other_key, again, "spent-2")
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert refused_samples(server, "scep") == watch.samples + 1
    (event,) = watch.new_events()
    assert event["reason"] == "authentication" and "already used" in event["detail"]


class BrokenDoor(CaDoor):
    """The real door over the real authority, with a bug where the core is entered."""

    def enroll(self, requester: Requester, enrollment: Enrollment) -> IssuedCertificate:
        raise RuntimeError(f"{INTERNAL_DETAIL} while enrolling")

    def record(self, serial: str) -> CertificateRecord | None:
        raise RuntimeError(f"{INTERNAL_DETAIL} while reading {serial}")


INTERNAL_DETAIL = "internal detail 0xdeadbeef at /srv/vpnca/core.py:12"


def logged_bug(caplog: pytest.LogCaptureFixture, error_id: str) -> logging.LogRecord:
    (record,) = [r for r in caplog.records if r.exc_info and error_id in r.getMessage()]
    assert INTERNAL_DETAIL in str(record.exc_info[1])  # type: ignore[index]
    return record


def call(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request through httpx to an ASGI app in this process."""
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://ca.test") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(send())


def test_an_internal_failure_answers_only_the_fixed_text_and_its_id(
        ca_home: CaHome, caplog: pytest.LogCaptureFixture) -> None:
    """EST and ACME on the real core, which fails where the adapter enters it: the body is the fixed
    text and the id; the traceback, with the exception's text, is logged under that id."""
    door = BrokenDoor(ca_home.authority)
    est = make_app(EstContext(door, ca_home.settings.est))
    credential = create_token(ca_home.store, identities=(IkeIdentity.parse("bug.example.com"),),
                              profile="device", protocol="est", ttl=timedelta(hours=1), created_by="test")
    response = call(est, "POST", "/.well-known/est/simpleenroll", content=est_csr_body("bug.example.com"),
                    headers={"Content-Type": "application/pkcs10"},
                    auth=(credential.token_id, remember_secret(credential.secret)))
    error_id = response.headers["X-Request-ID"]
    assert (response.status_code, response.text) == (500, f"internal error (id {error_id})\n")
    logged_bug(caplog, error_id)

    acme = FastAPI()
    acme.include_router(acme_router(AcmeService(door, ca_home.settings.acme, ca_home.settings.http_base_url)))
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca_home.authority.issue(IssueRequest(profile="device", identities=(IkeIdentity.parse(
        "bug.example.com"),), public_key=key.public_key(), requester="test"))
    response = call(acme, "GET", f"/acme/renewal-info/{cert_id_of(issued.certificate)}")
    error_id = response.headers["X-Request-ID"]
    assert response.status_code == 500 and INTERNAL_DETAIL not in response.text
    assert response.json()["detail"] == f"internal error (id {error_id})"
    logged_bug(caplog, error_id)


def test_acme_meets_approval_in_the_core_an_eab_account_is_approved_a_plain_one_refused(
        server: RunningServer, peers: tuple[LoopbackDns, Http01Server]) -> None:
    """The gateway profile wants approval: an account an operator bound (EAB) has it, an account
    without one is refused by the core (once), since ACME cannot wait for an operator."""
    _, csr = new_csr([GATEWAY])
    plain = acme_client(server, account_key())
    plain.net.account = plain.new_account(messages.NewRegistration.from_data(
        email="plain@example.com", terms_of_service_agreed=True))
    order = plain.new_order(csr)
    answer(plain, order, peers)
    order = plain.poll_authorizations(order, deadline())
    watch = Watch(server, "acme")
    with pytest.raises(messages.Error) as refused:
        plain.begin_finalization(order)
    assert refused.value.code == "unauthorized"
    assert "approval" in watch.assert_one_refusal("not_authorized")["detail"]

    bound = register(server, account_key(), eab_create(server.ca, GATEWAY))
    order = bound.new_order(csr)
    answer(bound, order, peers)
    issued = bound.finalize_order(bound.poll_authorizations(order, deadline()), deadline())
    leaf = x509.load_pem_x509_certificates(issued.fullchain_pem.encode())[0]
    record = server.ca.store.get_certificate(format(leaf.serial_number, "x"))
    assert record is not None and (record.profile, record.protocol) == ("gateway", "acme")
