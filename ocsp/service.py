"""The responder: pre-signed answers on the hot path, live signing only for nonces and misses.

When the token or the database is away the responder keeps answering: pre-signed answers in memory
are served as usual, and whatever would need the token or the database is answered tryLater
(RFC 6960 4.2.1), never an HTTP error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from ocsp.cache import PresignedCache
from ocsp.presign import PageWriter, PresignStats, ResponseEncoder, Share, Signable
from ocsp.responses import (
    CertIdKey,
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
from vpnca.errors import BadRequest, StoreUnavailable, Unavailable, VpncaError, token_errors
from vpnca.outage import OUTAGES
from vpnca.store import CertStatus, Store
from vpnca.store.ocsp_backlog import (
    SIGNED_STATUSES,
    BacklogEntry,
    BacklogReader,
    answer_values,
    save_answers,
    write_answer_values,
)
from vpnca.x509util import serial_hex

log = logging.getLogger("vpnca.ocsp")
PRESIGNED_HASHES = ("sha1", "sha256")
TRY_LATER = error_response("try_later")
# passes of one pre-signing run at most: each pass after the first signs only what changed during the one
# before, unless answers are stale as soon as signed (ocsp.validity no longer than ocsp.refresh_before)
MAX_PRESIGN_PASSES = 8
# The one error map of OCSP (RFC 6960 4.2.1): core error -> OCSPResponseStatus. A request the responder
# cannot read is malformedRequest (MalformedRequest, before the core is asked); the CA's own troubles
# are tryLater, while pre-signed answers in memory go on being served.
OCSP_STATUS: tuple[tuple[type[VpncaError], str], ...] = (
    (Unavailable, "try_later"),
    (BadRequest, "malformed_request"),
)


def ocsp_status_for(exc: VpncaError) -> str:
    return next((status for kind, status in OCSP_STATUS if isinstance(exc, kind)), "internal_error")


@dataclass(frozen=True)
class OcspAnswer:
    body: bytes
    next_update: datetime | None = None  # set when the answer may be cached (GET)
    kind: str = "presigned"  # presigned | live | malformed_request | unauthorized | try_later
    key: CertIdKey | None = None  # a pre-signed answer's CertID: the HTTP layer may memo its reply


def status_of(record: Signable | None) -> Status:
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
        self._resume: dict[Share, tuple[str, str]] = {}  # (status, serial) where a `limit` stopped a run

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
                return OcspAnswer(found[0], found[1], key=key)
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
            with token_errors():
                body = self.signer.sign(responses, now, nonce)
        except VpncaError as exc:  # the token logs its outage once and reopens itself
            OUTAGES.down("token", exc.__cause__ or exc)
            return OcspAnswer(error_response(ocsp_status_for(exc)), kind=ocsp_status_for(exc))
        OUTAGES.up("token")
        return OcspAnswer(body, None if nonce else next_update, kind="live")

    def presign(self, records: Sequence[Signable]) -> int:
        """Sign and store answers for `records` under each pre-signed CertID hash, in one transaction."""
        if self.signer is None or not records:
            return 0
        save_answers(self.store, self.sign_answers(records, PresignStats()))
        return len(records)

    def sign_answers(self, records: Sequence[Signable], stats: PresignStats) -> list[dict[str, object]]:
        """The ocsp_responses rows of `records` (every pre-signed CertID hash), signed now."""
        assert self.signer is not None
        now = datetime.now(UTC).replace(microsecond=0)  # DER GeneralizedTime: whole seconds
        next_update = now + self.settings.ocsp.validity
        encoder = ResponseEncoder(self.issuer_hashes, self.signer.responder_key_hash, now, now, next_update)
        started = time.perf_counter()
        answers: list[tuple[str, str, str, bytes]] = []  # serial, CertID hash, status, ResponseData
        for record in records:
            status, serial = status_of(record), int(record.serial, 16)
            answers += [(record.serial, name, status.state, encoder.response_data(name, serial, status))
                        for name in PRESIGNED_HASHES]
        signing_started = time.perf_counter()
        sign = self.signer.sign_response_data
        signed = [sign(tbs) for *_, tbs in answers]  # the token alone, back to back
        stats.encoding += signing_started - started
        stats.signing += time.perf_counter() - signing_started
        stats.certificates += len(records)
        stats.responses += len(answers)
        return [{"serial": serial, "hash_algorithm": algorithm, "cert_status": state, "this_update": now,
                 "next_update": next_update, "der": der}
                for (serial, algorithm, state, _), der in zip(answers, signed, strict=True)]

    def presign_backlog(self, share: Share | None = None, *, batch: int = 500,
                        stats: PresignStats | None = None, limit: int | None = None) -> int:
        """Pre-sign this worker's share of the certificates whose answer is missing, due for refresh or
        out of date, until none is left: keyset passes in serial order, again while a pass found some
        (certificates issued or revoked meanwhile). `limit`: stop after about that many (a sample); the
        next run goes on from there rather than reading again past what this one signed."""
        if self.signer is None:
            return 0
        share = share or Share()
        stats = stats if stats is not None else PresignStats()
        done = 0
        resume = self._resume.pop(share, None)
        for _ in range(MAX_PRESIGN_PASSES):
            found, stopped = self._presign_pass(share, batch, stats, None if limit is None else limit - done,
                                                resume)
            done += found
            if limit is not None and done >= limit:
                if stopped is not None:
                    self._resume[share] = stopped
                return done
            if not found and resume is None:  # a pass from the start found nothing: the backlog is drained
                return done
            resume = None
        log.warning("OCSP pre-signing stopped after %d passes: answers are due as soon as signed "
                    "(ocsp.validity no longer than ocsp.refresh_before?)", MAX_PRESIGN_PASSES)
        return done

    def _presign_pass(self, share: Share, batch: int, stats: PresignStats, limit: int | None,
                      resume: tuple[str, str] | None) -> tuple[int, tuple[str, str] | None]:
        """One pass over the share's backlog in serial order (valid, then revoked certificates; from
        `resume` if given), a page read and signed at a time while a second thread writes the one before.
        Returns how many it signed and, if `limit` stopped it, where."""
        refresh_before = datetime.now(UTC) + self.settings.ocsp.refresh_before
        issuer, suffixes = self.settings.ca.name, share.suffixes()
        statuses = SIGNED_STATUSES[SIGNED_STATUSES.index(resume[0]):] if resume else SIGNED_STATUSES
        found = 0
        stats.passes += 1

        reader = BacklogReader(self.store, issuer, suffixes=suffixes, limit=batch)

        def read(status: str, after: str) -> list[BacklogEntry]:
            started = time.perf_counter()
            try:
                return reader.page(status, after, refresh_before)
            finally:
                stats.reading += time.perf_counter() - started

        with PageWriter(partial(write_answer_values, self.store), stats) as writer:
            for status in statuses:
                after = resume[1] if resume and status == resume[0] else ""
                if limit is not None and found >= limit:
                    return found, (status, after)
                page = read(status, after)
                while page:
                    values = answer_values(self.store, self.sign_answers(page, stats))
                    found += len(page)
                    after = page[-1].serial
                    stopped = limit is not None and found >= limit
                    # the last page was written while this one was signed; the next is read between two
                    # writes, as an SQLite reader beside a commit stalls
                    writer.wait()
                    page = [] if stopped else read(status, after)
                    writer.write(values)
                    if stopped:
                        return found, (status, after)
        return found, None

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
