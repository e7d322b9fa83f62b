"""The responder: pre-signed answers on the hot path, live signing only for nonces and misses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

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
    single_response,
)
from vpnca.config import Settings
from vpnca.store import CertificateRecord, CertStatus, OcspResponseRecord, Store
from vpnca.x509util import serial_hex

log = logging.getLogger("vpnca.ocsp")
PRESIGNED_HASHES = ("sha1", "sha256")


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
        self.cache = PresignedCache(store)
        # request DER -> (serial, hash) of requests already found to be plain single-CertID lookups:
        # repeat pollers (every gateway, every few minutes) skip the ASN.1 parse entirely
        self._known_requests: dict[bytes, tuple[str, str]] = {}

    def respond(self, der: bytes) -> OcspAnswer:
        """The whole answer, signing live where nothing pre-signed fits."""
        fast = self.respond_presigned(der)
        return fast if isinstance(fast, OcspAnswer) else self.sign_live(fast.requests, fast.nonce)

    def respond_presigned(self, der: bytes) -> OcspAnswer | ParsedRequest:
        """An answer that needs no signing (pre-signed or an error), or the request to sign live."""
        known = self._known_requests.get(der)
        if known is not None:
            found = self.cache.get(*known)
            if found is not None and found[1] > datetime.now(UTC):
                return OcspAnswer(found[0], found[1])
        try:
            request = parse_request(der)
        except MalformedRequest as exc:
            log.warning("malformed OCSP request: %s", exc)
            return OcspAnswer(error_response("malformed_request"), kind="malformed_request")
        if not all(self.issuer_hashes.matches(r) for r in request.requests):
            log.warning("OCSP request for an issuer we are not")
            return OcspAnswer(error_response("unauthorized"), kind="unauthorized")
        # without a signing key the nonce cannot be echoed: answer pre-signed (RFC 8954 lets a responder omit it)
        if len(request.requests) == 1 and (request.nonce is None or self.signer is None):
            item = request.requests[0]
            if item.hash_algorithm in PRESIGNED_HASHES:
                key = (serial_hex(item.serial), item.hash_algorithm)
                found = self.cache.get(*key)
                if found is not None and found[1] > datetime.now(UTC):
                    if request.nonce is None and len(self._known_requests) < 200_000:
                        self._known_requests[der] = key
                    return OcspAnswer(found[0], found[1])
        return request

    def sign_live(self, requests: list[CertRequest], nonce: bytes | None) -> OcspAnswer:
        if self.signer is None:
            return OcspAnswer(error_response("try_later"), kind="try_later")
        now = datetime.now(UTC).replace(microsecond=0)  # DER GeneralizedTime: whole seconds
        next_update = now + self.settings.ocsp.validity
        responses = [single_response(r.cert_id, status_of(self.store.get_certificate(serial_hex(r.serial))),
                                     now, next_update) for r in requests]
        return OcspAnswer(self.signer.sign(responses, now, nonce), None if nonce else next_update, kind="live")

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
                                               cert_status=status.state, this_update=now, next_update=next_update,
                                               der=der))
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

    from vpnca.ca import load_ca_certificate, open_settings_token, token_key

    issuer, _ = load_ca_certificate(store, "sub")
    signer = None
    if with_signer:
        certificate, label = load_ca_certificate(store, "ocsp")
        assert label is not None
        key = token_key(open_settings_token(settings), label)
        assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
        signer = OcspSigner(certificate, key)
    return OcspService(settings, store, IssuerHashes.of(issuer), signer)
