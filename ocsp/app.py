"""A lean ASGI front for the revocation hot paths: OCSP (POST and GET) and CRL downloads.

Everything else falls through to the wrapped app. No framework on the hot path: one dictionary
lookup, one indexed SELECT, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
import urllib.parse
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ocsp.responses import error_response
from ocsp.service import OcspAnswer, OcspService
from vpnca import metrics
from vpnca.crlshards import shard_name
from vpnca.store.crls import latest_crl_header

if TYPE_CHECKING:
    from sqlalchemy import Row

log = logging.getLogger("vpnca.ocsp.http")
OCSP_RESPONSE = b"application/ocsp-response"
Asgi = Any


class CrlCache:
    """The latest CRLs by URL path (the sub-CA's full, delta and shard CRLs, the root's), re-read at
    most once a second."""

    def __init__(self, service: OcspService) -> None:
        settings = service.settings
        self.service = service
        # path -> (the CA whose CRL it is, whether it is the delta CRL)
        self.names = {f"/crl/{settings.ca.name}.crl": (settings.ca.name, False),
                      f"/crl/{settings.root_crl_name}.crl": (settings.root_crl_name, False),
                      f"/crl/{settings.delta_crl_name}.crl": (settings.ca.name, True),
                      **{f"/crl/{shard_name(settings, k)}.crl": (shard_name(settings, k), False)
                         for k in range(settings.crl.shards)}}
        self._records: dict[str, tuple[float, Row[Any] | None]] = {}

    def current(self, path: str) -> Row[Any] | None:
        """The CRL is read again only when its number changed (a CRL of 10^6 entries is ~50 MB)."""
        now = time.monotonic()
        checked, record = self._records.get(path, (0.0, None))
        if now - checked > 1.0:
            ca_name, delta = self.names[path]
            header = latest_crl_header(self.service.store, ca_name, delta=delta)
            if header is None or record is None or record.number != header[0]:
                record = self.service.store.latest_crl(ca_name, delta=delta)
            self._records[path] = (now, record)
        return record


async def _send(send: Asgi, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    """The client closed the connection before its request body was complete."""


async def _read(receive: Asgi, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def revocation_app(service: OcspService, fallback: Asgi) -> Asgi:
    limit = service.settings.ocsp.max_request_bytes
    crls = CrlCache(service)

    async def answer(der: bytes) -> OcspAnswer:
        """Pre-signed answers inline (an indexed read); signing goes to a worker thread."""
        started = time.perf_counter()
        try:
            fast = service.respond_presigned(der)
            answer = fast if isinstance(fast, OcspAnswer) else await run_in_threadpool(
                service.sign_live, fast.requests, fast.nonce)
        except Exception:  # an OCSP client gets an OCSP answer, never an HTTP 500
            log.exception("OCSP request failed")
            answer = OcspAnswer(error_response("internal_error"), kind="internal_error")
        metrics.ocsp_answered(answer.kind, time.perf_counter() - started)
        return answer

    async def ocsp(scope: Asgi, receive: Asgi, send: Asgi) -> None:
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in ("/ocsp", "/ocsp/"):
            try:
                body = await _read(receive, limit)
            except ClientGone:
                log.info("OCSP client closed the connection during its request")
                return
            if body is None:
                log.warning("OCSP request over %d bytes refused", limit)
                await _send(send, 200, error_response("malformed_request"),
                            [(b"content-type", OCSP_RESPONSE)])
                return
            cacheable = False
        elif method == "GET" and path.startswith("/ocsp/"):
            raw = scope.get("raw_path") or path.encode()
            encoded = urllib.parse.unquote(raw.decode("latin-1")[len("/ocsp/"):])
            try:
                body = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                body = b""
            cacheable = True
        else:
            await _send(send, 405, b"use POST /ocsp or GET /ocsp/<base64>\n",
                        [(b"content-type", b"text/plain")])
            return
        result = await answer(body)
        headers = [(b"content-type", OCSP_RESPONSE)]
        if cacheable and result.next_update is not None:
            max_age = max(0, int((result.next_update - datetime.now(UTC)).total_seconds()))
            headers += [(b"cache-control",
                         f"public, max-age={max_age}, no-transform, must-revalidate".encode()),
                        (b"etag", f'"{hashlib.sha1(result.body).hexdigest()}"'.encode())]
        await _send(send, 200, result.body, headers)

    async def crl(scope: Asgi, receive: Asgi, send: Asgi) -> None:
        record = crls.current(scope["path"])
        if record is None:
            await _send(send, 404, b"no CRL published yet\n", [(b"content-type", b"text/plain")])
            return
        etag = f'"crl-{record.number}"'.encode()
        request_headers = dict(scope["headers"])
        max_age = max(0, int((record.next_update - datetime.now(UTC)).total_seconds()))
        headers = [(b"etag", etag),
                   (b"last-modified", format_datetime(record.this_update, usegmt=True).encode()),
                   (b"cache-control", f"public, max-age={max_age}, no-transform".encode())]
        if not_modified(request_headers, etag, record.this_update):
            await _send(send, 304, b"", headers)
            return
        await _send(send, 200, record.der, [(b"content-type", b"application/pkix-crl"), *headers])

    async def app(scope: Asgi, receive: Asgi, send: Asgi) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/ocsp" or path.startswith("/ocsp/"):
                await ocsp(scope, receive, send)
                return
            if path in crls.names and scope["method"] in ("GET", "HEAD"):
                await crl(scope, receive, send)
                return
        await fallback(scope, receive, send)

    return app


def not_modified(headers: dict[bytes, bytes], etag: bytes, last_modified: datetime) -> bool:
    if b"if-none-match" in headers:
        if_none_match = headers[b"if-none-match"]
        return etag in [t.strip() for t in if_none_match.split(b",")] or if_none_match == b"*"
    if b"if-modified-since" in headers:
        try:
            since = parsedate_to_datetime(headers[b"if-modified-since"].decode())
        except (TypeError, ValueError):
            return False
        return last_modified.replace(microsecond=0) <= since
    return False
