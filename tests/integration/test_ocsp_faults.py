"""OCSP while the token or the database is away: tryLater for what needs them, never an HTTP error.

(The token taken away from a real `vpnca serve` is in test_hsm_recovery.py; the pre-signed store
with the database away is in tests/unit/test_ocsp_cache.py.)
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import core
from asn1crypto import ocsp as aocsp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hsm import HsmUnavailable
from ocsp.responses import OcspSigner, error_response
from ocsp.service import OcspService
from tests.unit.test_ocsp_cache import HASHES, ISSUER, request, save, service
from vpnca.store import Store

TRY_LATER = error_response("try_later")


class AwayKey(ec.EllipticCurvePrivateKey):
    """A token key whose token has gone: every signature fails as the token layer fails it."""

    def __init__(self) -> None:
        self._real = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:  # type: ignore[override]
        raise HsmUnavailable("token vpnca is unavailable (ObjectHandleInvalid)")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._real.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._real.curve

    @property
    def key_size(self) -> int:
        return self._real.key_size

    def exchange(self, *args: object) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: object) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> AwayKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> AwayKey:
        return self


def with_nonce(serial: int) -> bytes:
    return request(serial, extensions=[{"extn_id": "nonce", "critical": False,
                                        "extn_value": core.OctetString(os.urandom(16)).dump()}])


def two_cert_ids(first: int, second: int) -> bytes:
    name_hash, key_hash = HASHES.by_algorithm["sha1"]
    items = [{"req_cert": {"hash_algorithm": {"algorithm": "sha1"}, "issuer_name_hash": name_hash,
                           "issuer_key_hash": key_hash, "serial_number": s}} for s in (first, second)]
    der: bytes = aocsp.OCSPRequest({"tbs_request": {"request_list": items}}).dump()
    return der


@pytest.fixture
def responder(tmp_path: Path) -> OcspService:
    (tmp_path / "db").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'db/vpnca.db'}")
    store.init_schema()
    save(store, range(1, 3))
    answering = service(tmp_path, store)
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = AwayKey()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP signer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ISSUER.subject)
            .public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    answering.signer = OcspSigner(cert, key)
    return answering


def test_live_answers_are_try_later_while_the_token_is_away(responder: OcspService) -> None:
    for body in (with_nonce(1), two_cert_ids(1, 2), with_nonce(99)):
        answer = responder.respond(body)
        assert answer.body == TRY_LATER and answer.kind == "try_later"
    assert responder.respond(request(1)).kind == "presigned"  # what is pre-signed needs no token


def test_live_answers_are_try_later_while_the_database_is_away(
        responder: OcspService, monkeypatch: pytest.MonkeyPatch) -> None:
    # a real store whose PostgreSQL does not answer (nothing listens on port 1)
    monkeypatch.setattr(responder, "store", Store("postgresql+psycopg://vpnca@127.0.0.1:1/gone?connect_timeout=2"))
    for body in (with_nonce(1), two_cert_ids(1, 2)):
        assert responder.respond(body).body == TRY_LATER
