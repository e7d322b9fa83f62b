"""SCEP refusals in-process, against a CA on the SoftHSM token: the CA's own troubles (database down,
token away, a bug) are a CertRep FAILURE or, when the RA key cannot sign even that, HTTP 503; each
refusal is logged once, a bug with its traceback, and no internal text reaches the client."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from enrollment import scep
from hsm import HsmUnavailable
from tests.conftest import CaHome
from vpnca.app import scep_context
from vpnca.errors import SigningUnavailable
from vpnca.ports import CaDoor, GuardedRsaKey
from vpnca.store import Store

CLIENT = "192.0.2.7"


@pytest.fixture
def ctx(ca_home: CaHome) -> Iterator[scep.ScepContext]:
    context = scep_context(ca_home.settings, ca_home.store, CaDoor(ca_home.authority))
    assert context is not None
    yield context


def message(ctx: scep.ScepContext, message_type: int, content: bytes, transaction_id: str = "tx-1") -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe.example.com")])
    now = datetime.now(UTC)
    signer = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(1).not_valid_before(now - timedelta(hours=1))
              .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
    return scep.signed_message(signer, key, message_type=message_type, transaction_id=transaction_id,
                               sender_nonce=os.urandom(16), content=scep.envelope(content, ctx.ra_cert))


def get_crl(ctx: scep.ScepContext) -> bytes:
    return message(ctx, scep.GET_CRL, b"\x30\x03\x02\x01\x01")


def status_of(reply: scep.ScepReply) -> tuple[str, str | None]:
    assert (reply.status, reply.media_type) == (200, "application/x-pki-message"), reply
    signer = cms.ContentInfo.load(reply.body)["content"]["signer_infos"][0]
    attrs = {a["type"].dotted: a["values"][0].dump() for a in signer["signed_attrs"]}
    fail = attrs.get(scep.OID_FAIL_INFO)
    return (core.PrintableString.load(attrs[scep.OID_PKI_STATUS]).native,
            core.PrintableString.load(fail).native if fail else None)


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "enrollment.refused"]


class TokenAway:
    """The RA key when the token is gone: every operation raises HsmUnavailable."""

    def __init__(self, key: rsa.RSAPrivateKey, *, can_sign: bool = False) -> None:
        self.key, self.can_sign = key, can_sign

    def decrypt(self, *args: Any) -> bytes:
        raise HsmUnavailable("token vpnca-test: DeviceRemoved")

    def sign(self, *args: Any) -> bytes:
        if self.can_sign:
            return self.key.sign(*args)
        raise HsmUnavailable("token vpnca-test: DeviceRemoved")

    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()


def test_a_refusal_is_a_certrep_failure_logged_once_without_traceback(
        ctx: scep.ScepContext, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    reply = scep.handle(ctx, message(ctx, scep.GET_CERT, b"not an IssuerAndSerialNumber"), CLIENT)
    assert status_of(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    (record,) = refusals(caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.fields["fail_info"] == scep.BAD_REQUEST and record.fields["client"] == CLIENT  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info]


def test_unparsable_cms_is_http_400_with_a_short_text(ctx: scep.ScepContext) -> None:
    for der in (b"", b"\x30\x82\x01\x00garbage", os.urandom(300)):
        reply = scep.handle(ctx, der, CLIENT)
        assert (reply.status, reply.media_type, reply.body) == (400, "text/plain", b"malformed pkiMessage\n")


def test_database_down_is_a_certrep_failure(ctx: scep.ScepContext, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    # a real store whose PostgreSQL does not answer (nothing listens on port 1)
    monkeypatch.setattr(ctx.door, "_store", Store("postgresql+psycopg://vpnca@127.0.0.1:1/gone?connect_timeout=2"))
    reply = scep.handle(ctx, get_crl(ctx), CLIENT)
    assert status_of(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert b"127.0.0.1" not in reply.body and b"gone" not in reply.body
    assert not [r for r in caplog.records if r.exc_info]  # an outage, said by OUTAGES, not a traceback


def test_an_unexpected_error_is_logged_with_its_traceback_and_answered_bad_request(
        ctx: scep.ScepContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("internal detail 0xdeadbeef")

    monkeypatch.setattr(ctx.door, "latest_crl", bug)
    reply = scep.handle(ctx, get_crl(ctx), CLIENT)
    assert status_of(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert b"0xdeadbeef" not in reply.body
    (logged,) = [r for r in caplog.records if r.exc_info]
    assert logged.levelno == logging.ERROR and isinstance(logged.exc_info[1], RuntimeError)  # type: ignore[index]


def test_token_trouble_while_the_ra_can_still_sign_is_a_certrep_failure(
        ctx: scep.ScepContext, monkeypatch: pytest.MonkeyPatch) -> None:
    def away(*args: Any, **kwargs: Any) -> None:
        raise SigningUnavailable("token vpnca-test: DeviceRemoved")

    monkeypatch.setattr(ctx.door, "latest_crl", away)  # as the CA key failing to sign would
    assert status_of(scep.handle(ctx, get_crl(ctx), CLIENT)) == (scep.FAILURE, scep.BAD_REQUEST)
    # the token failing to unwrap the content key: SoftHSM says the same (GeneralError) for a forged
    # key transport, so it is the message's fault as long as the RA can sign the answer
    unwrap_fails = dataclasses.replace(ctx, ra_key=GuardedRsaKey(TokenAway(ctx.ra_key, can_sign=True)))  # type: ignore[arg-type]
    reply = scep.handle(unwrap_fails, get_crl(ctx), CLIENT)
    assert status_of(reply) == (scep.FAILURE, scep.BAD_MESSAGE_CHECK)


def test_token_away_so_no_certrep_can_be_signed_is_503_with_retry_after(ctx: scep.ScepContext) -> None:
    away = dataclasses.replace(ctx, ra_key=GuardedRsaKey(TokenAway(ctx.ra_key)))  # type: ignore[arg-type]
    reply = scep.handle(away, get_crl(ctx), CLIENT)
    assert (reply.status, reply.media_type) == (503, "text/plain")
    assert reply.headers["Retry-After"] == str(scep.RETRY_AFTER_SECONDS)
    assert b"DeviceRemoved" not in reply.body


def test_a_content_key_the_token_cannot_unwrap_is_bad_message_check(ctx: scep.ScepContext) -> None:
    """The RA key is on the token: a forged key transport is the client's fault (badMessageCheck),
    not an outage of the token."""
    good = cms.ContentInfo.load(scep.envelope(b"\x30\x00", ctx.ra_cert))
    recipient = good["content"]["recipient_infos"][0].chosen
    for forged in (b"\x01" * len(recipient["encrypted_key"].native), b"\xff" * 512):
        recipient["encrypted_key"] = forged
        content = good.dump(force=True)
        key = rsa.generate_private_key(65537, 2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged.example.com")])
        now = datetime.now(UTC)
        signer = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                  .serial_number(3).not_valid_before(now - timedelta(hours=1))
                  .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
        der = scep.signed_message(signer, key, message_type=scep.PKCS_REQ, transaction_id="forged",
                                  sender_nonce=os.urandom(16), content=content)
        assert status_of(scep.handle(ctx, der, CLIENT)) == (scep.FAILURE, scep.BAD_MESSAGE_CHECK)


def test_the_error_map_names_every_core_error_once() -> None:
    from vpnca.errors import BadRequest, Conflict, NotAuthenticated, NotFound, PolicyViolation

    assert scep.fail_info_for(NotFound("x")) == (scep.BAD_CERT_ID, "not_found")
    assert scep.fail_info_for(NotAuthenticated("x")) == (scep.BAD_REQUEST, "authentication")
    assert scep.fail_info_for(PolicyViolation("x")) == (scep.BAD_REQUEST, "policy")
    assert scep.fail_info_for(BadRequest("x")) == (scep.BAD_REQUEST, "bad_request")
    assert scep.fail_info_for(Conflict("x")) == (scep.BAD_REQUEST, "conflict")
    assert scep.fail_info_for(scep.ScepFailure(scep.BAD_TIME, "x")) == (scep.BAD_TIME, "bad_time")
    assert scep.fail_info_for(RuntimeError("x")) is None
