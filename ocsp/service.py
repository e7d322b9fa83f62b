"""The responder: pre-signed answers on the hot path, live signing only for nonces and misses.

When the token or the database is away the responder keeps answering: pre-signed answers in memory
are served as usual, and whatever would need the token or the database is answered tryLater
(RFC 6960 4.2.1), never an HTTP error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from hsm import HsmError
from ocsp.cache import PresignedCache
from ocsp.responses import (
    CertRequest,
    IssuerHashes,
    MalformedRequest,
    OcspSigner,
    ParsedRequest,
    Status,
    error_response,
    parse_request,
    plain_cert_id,
    single_response,
)
from vpnca.config import Settings
from vpnca.errors import StoreUnavailable
from vpnca.outage import OUTAGES
from vpnca.store import CertificateRecord, CertStatus, OcspResponseRecord, Store
from vpnca.x509util import serial_hex

log = logging.getLogger("vpnca.ocsp")
PRESIGNED_HASHES = ("sha1", "sha256")
TRY_LATER = error_response("try_later")


@dataclass(frozen=True)
class OcspAnswer:
    body: bytes
    next_update: datetime | None = None  # set when the answer may be cached (GET)
    kind: str = "presigned"  # presigned | live | malformed_request | unauthorized | try_later


def status_of(record: CertificateRecord | None) -> Status:
    if record is None or record.status not in (CertStatus.VALID, CertStatus.REVOKED):
        return Status("unknown")
    if record.status == CertStatus.REVOKED:
        return Status("revoked", record.revoked_at, record.revocation_reason)
    return Status("good")


class OcspService:
    def __init__(self, settings: Settings, store: Store, issuer_hashes: IssuerHashes,
                 signer: OcspSigner | None) -> None:
        self.settings = settings
        self.store = store
        self.issuer_hashes = issuer_hashes
        self.signer = signer
        self.cache = PresignedCache(store, issuer_hashes)

    def respond(self, der: bytes) -> OcspAnswer:
        """The whole answer, signing live where nothing pre-signed fits."""
        fast = self.respond_presigned(der)
        return fast if isinstance(fast, OcspAnswer) else self.sign_live(fast.requests, fast.nonce)

    def respond_presigned(self, der: bytes) -> OcspAnswer | ParsedRequest:
        """An answer that needs no signing (pre-signed, tryLater or an error), or the request to sign live."""
        key = plain_cert_id(der)  # the hot path: most pollers send one plain CertID
        if key is not None and not self.issuer_hashes.matches_key(key):
            key = None  # parse_request reads it in full and refuses it
        request: ParsedRequest | None = None
        if key is None:
            try:
                request = parse_request(der)
            except MalformedRequest as exc:
                log.warning("malformed OCSP request: %s", exc)
                return OcspAnswer(error_response("malformed_request"), kind="malformed_request")
            if not all(self.issuer_hashes.matches(r) for r in request.requests):
                log.warning("OCSP request for an issuer we are not")
                return OcspAnswer(error_response("unauthorized"), kind="unauthorized")
            # without a signing key the nonce cannot be echoed: answer pre-signed (RFC 8954 lets a responder
            # omit it); a nonce or several CertIDs are signed live and never cached
            if len(request.requests) != 1 or (request.nonce is not None and self.signer is not None):
                return request
            key = request.requests[0].key
        if key[0] in PRESIGNED_HASHES:
            try:
                found = self.cache.get(key)
            except StoreUnavailable:
                return OcspAnswer(TRY_LATER, kind="try_later")
            if found is not None and found[1] > datetime.now(UTC):
                return OcspAnswer(found[0], found[1])
        if request is None:  # a plain request that missed: read it in full for live signing
            try:
                request = parse_request(der)
            except MalformedRequest as exc:
                log.warning("malformed OCSP request: %s", exc)
                return OcspAnswer(error_response("malformed_request"), kind="malformed_request")
        return request

    def sign_live(self, requests: list[CertRequest], nonce: bytes | None) -> OcspAnswer:
        """Sign an answer now; tryLater while the token or the database is unavailable."""
        if self.signer is None:
            return OcspAnswer(TRY_LATER, kind="try_later")
        now = datetime.now(UTC).replace(microsecond=0)  # DER GeneralizedTime: whole seconds
        next_update = now + self.settings.ocsp.validity
        try:
            responses = [single_response(r.cert_id,
                                         status_of(self.store.get_certificate(serial_hex(r.serial))),
                                         now, next_update) for r in requests]
        except StoreUnavailable as exc:
            OUTAGES.down("database", exc.__cause__ or exc)
            return OcspAnswer(TRY_LATER, kind="try_later")
        self.cache.database_is_up()
        try:
            body = self.signer.sign(responses, now, nonce)
        except HsmError as exc:  # the token logs its outage once and reopens itself
            OUTAGES.down("token", exc)
            return OcspAnswer(TRY_LATER, kind="try_later")
        OUTAGES.up("token")
        return OcspAnswer(body, None if nonce else next_update, kind="live")

    def presign(self, records: list[CertificateRecord]) -> int:
        """Sign and store responses for `records` under each pre-signed CertID hash."""
        if self.signer is None or not records:
            return 0
        now = datetime.now(UTC).replace(microsecond=0)  # DER GeneralizedTime: whole seconds
        next_update = now + self.settings.ocsp.validity
        rows = []
        for record in records:
            status = status_of(record)
            for algorithm in PRESIGNED_HASHES:
                cert_id = self.issuer_hashes.cert_id(algorithm, int(record.serial, 16))
                der = self.signer.sign([single_response(cert_id, status, now, next_update)], now)
                rows.append(OcspResponseRecord(serial=record.serial, hash_algorithm=algorithm,
                                               cert_status=status.state, this_update=now,
                                               next_update=next_update, der=der))
        self.store.save_ocsp_responses(rows)
        return len(records)

    def presign_backlog(self, *, batch: int = 500) -> int:
        """Pre-sign every certificate whose response is missing or due for refresh."""
        issuer = self.settings.ca.name
        done = 0
        while True:
            refresh_before = datetime.now(UTC) + self.settings.ocsp.refresh_before
            backlog = self.store.ocsp_backlog(issuer, refresh_before, batch)
            if not backlog:
                return done
            done += self.presign(backlog)

    def presign_serials(self, serials: list[str]) -> int:
        return self.presign([r for r in (self.store.get_certificate(s) for s in serials) if r is not None])


def load_ocsp_service(settings: Settings, store: Store, *, with_signer: bool = True) -> OcspService:
    """The responder for the current sub-CA; the signer key is opened on the token if asked for."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from vpnca.issuer import load_ca_certificate, open_settings_token, token_key

    issuer, _ = load_ca_certificate(store, "sub")
    signer = None
    if with_signer:
        certificate, label = load_ca_certificate(store, "ocsp")
        assert label is not None
        key = token_key(open_settings_token(settings), label)
        assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
        signer = OcspSigner(certificate, key)
    return OcspService(settings, store, IssuerHashes.of(issuer), signer)
