"""EST (RFC 7030) over HTTPS: cacerts, simpleenroll, simplereenroll, csrattrs, serverkeygen.

Authentication: HTTP Basic with a one-time token (`vpnca token create`), or the TLS client
certificate (a current vpnca certificate, or one from a configured bootstrap CA). The client
certificate comes from the TLS layer (scope["extensions"]["tls"], filled by vpnca.server) or, from a
configured reverse proxy only, from a header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from starlette.requests import Request
from starlette.responses import Response

from enrollment.auth import Requester, check_token, requester_from_certificate
from enrollment.http import BodyTooLarge, read_limited_body
from enrollment.service import Enrollment, enroll
from hsm import HsmError, generate_software_key
from hsm.token import KeyAlgorithm
from vpnca import metrics
from vpnca.authority import Authority, IssuedCertificate
from vpnca.config import Settings
from vpnca.errors import (
    BadRequest,
    ConfigError,
    NotAuthenticated,
    NotAuthorized,
    Pending,
    PolicyViolation,
    StoreUnavailable,
    VpncaError,
)
from vpnca.events import emit
from vpnca.outage import OUTAGES
from vpnca.x509util import load_csr

log = logging.getLogger("vpnca.est")

EST_PREFIX = "/.well-known/est/"
ENROLL_OPERATIONS = ("simpleenroll", "simplereenroll", "serverkeygen")
PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"
PROFILES = ("device", "gateway")
SERVER_KEY_ALGORITHM: dict[str, KeyAlgorithm] = {"device": "ec-p256", "gateway": "ec-p384"}
CURVE_OID = {"device": "1.2.840.10045.3.1.7", "gateway": "1.3.132.0.34"}
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"


# asn1crypto ships no types: its spec classes are Any to mypy, and these specs must subclass them
class _Attribute(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[tuple[Any, ...]]] = [("type", core.ObjectIdentifier),
                                                ("values", core.SetOf, {"spec": core.Any})]


class _AttrOrOid(core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar[list[tuple[Any, ...]]] = [("oid", core.ObjectIdentifier),
                                                      ("attribute", _Attribute)]


class CsrAttrs(core.SequenceOf):  # type: ignore[misc]
    """RFC 7030 4.5.2: CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID."""

    _child_spec = _AttrOrOid


class EstError(Exception):
    """An HTTP error with the RFC 7030 status and a text reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class EstContext:
    authority: Authority
    bootstrap_cas: list[x509.Certificate] = field(default_factory=list)

    @property
    def chain(self) -> list[x509.Certificate]:
        root = self.authority.store.current_ca("root")
        certs = [self.authority.certificate]
        if root is not None:
            certs.append(x509.load_der_x509_certificate(root.der))
        return certs


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def certs_only(certs: list[x509.Certificate]) -> Response:
    body = _b64(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))
    return Response(body, media_type=PKCS7_CERTS, headers={"Content-Transfer-Encoding": "base64"})


def csr_attributes(profile: str) -> bytes:
    """What the profile wants: an EC key on its curve, ECDSA with SHA-256/384, no challenge password."""
    curve = core.ObjectIdentifier(CURVE_OID[profile])
    attrs = CsrAttrs([
        _AttrOrOid(name="oid", value=core.ObjectIdentifier(
            OID_ECDSA_WITH_SHA384 if profile == "gateway" else OID_ECDSA_WITH_SHA256)),
        _AttrOrOid(name="attribute", value=_Attribute({
            "type": OID_EC_PUBLIC_KEY, "values": [core.Any.load(curve.dump())]})),
    ])
    der: bytes = attrs.dump()
    return der


async def read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_limited_body(request, limit)
    except BodyTooLarge as exc:
        raise EstError(413, str(exc)) from exc


def decode_csr(body: bytes) -> x509.CertificateSigningRequest:
    """The base64 DER PKCS#10 body of simpleenroll (RFC 7030 4.2.1)."""
    compact = b"".join(body.split())
    if not compact:
        raise BadRequest("empty request body: expected a base64 PKCS#10 CSR")
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("request body is not valid base64") from exc
    return load_csr(der)


def check_proxy_listener(settings: Settings, host: str) -> None:
    """The client-certificate header is believed only from a reverse proxy on this machine: with
    `est.trusted_proxies` set, the HTTPS listener must be bound to loopback, so that nothing else
    can reach it and present somebody's certificate in the header."""
    if not settings.est.trusted_proxies:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(f"est.trusted_proxies is set, so the HTTPS listener must be bound to loopback "
                          f"(127.0.0.1 or ::1) behind the proxy, not {host}: see deploy/nginx-est.conf")
    outside = [p for p in settings.est.trusted_proxies if not _is_loopback(p)]
    if outside:
        raise ConfigError("est.trusted_proxies may name loopback addresses only (the proxy on this "
                          f"machine), not {', '.join(outside)}")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_app(ctx: EstContext) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
    """The EST endpoints as a plain ASGI app under /.well-known/est/ (no framework routing: this is
    the enrollment hot path); issuance runs on this app's own thread pool."""
    settings = ctx.authority.settings
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="est")

    def client_certificate(request: Request) -> x509.Certificate | None:
        tls = request.scope.get("extensions", {}).get("tls", {})
        chain = tls.get("client_cert_chain") or []
        if chain:
            return x509.load_pem_x509_certificate(chain[0].encode())
        header = request.headers.get(settings.est.client_cert_header)
        if header:
            peer = request.client.host if request.client else ""
            if peer not in settings.est.trusted_proxies:
                log.warning("client certificate header from untrusted address %s ignored", peer)
                return None
            try:
                return x509.load_pem_x509_certificate(urllib.parse.unquote(header).encode())
            except ValueError as exc:
                raise EstError(400, "malformed client certificate header") from exc
        return None

    def authenticate(request: Request, *, renewal: bool) -> Requester:
        cert = client_certificate(request)
        if cert is not None:
            try:
                return requester_from_certificate(ctx.authority.store, settings, ctx.authority.certificate,
                                                  cert, ctx.bootstrap_cas)
            except NotAuthorized:
                if renewal or "authorization" not in request.headers:
                    raise
        if renewal:
            raise NotAuthenticated("re-enrollment needs the TLS client certificate being renewed")
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            raise NotAuthenticated("credentials required: HTTP Basic token or TLS client certificate")
        try:
            token_id, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise NotAuthenticated("malformed Basic credentials") from exc
        return check_token(ctx.authority.store, token_id, secret, protocol="est")

    def profile_for(label: str | None) -> str:
        profile = label or settings.est.default_profile
        if profile not in PROFILES:
            raise EstError(404, f"unknown EST label {label!r}")
        return profile

    def refuse(request: Request, operation: str, exc: Exception) -> Response:
        """The RFC 7030 answer to a refusal; logged, and counted unless the core counted it."""
        if isinstance(exc, EstError):
            status, reason, headers = exc.status, exc.reason, exc.headers
        elif isinstance(exc, Pending):
            status, reason = 202, str(exc)
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, NotAuthenticated):
            status, reason, headers = 401, str(exc), {"WWW-Authenticate": 'Basic realm="vpnca EST"'}
        elif isinstance(exc, (NotAuthorized, PolicyViolation)):
            status, reason, headers = 403, str(exc), {}
        elif isinstance(exc, BadRequest):
            status, reason, headers = 400, str(exc), {}
        elif isinstance(exc, HsmError):
            OUTAGES.down("token", exc)
            status, reason, headers = 503, "signing is unavailable; try again later", {"Retry-After": "30"}
        elif isinstance(exc, StoreUnavailable):
            OUTAGES.down("database", exc.__cause__ or exc)
            status, reason, headers = 503, "the CA is unavailable; try again later", {
                "Retry-After": str(settings.est.retry_after_seconds)}
        else:
            status, reason, headers = 500, "internal error", {}
        client = request.client.host if request.client else "-"
        if status == 503:  # said once by the outage log, not once per request
            metrics.refused("est", "unavailable")
        elif status != 202:  # logged and counted; the audit chain is for what changed, not for refusals
            kind = {401: "authentication", 403: "authorization", 400: "bad_request", 413: "too_large",
                    415: "media_type"}.get(status, "error")
            emit("authentication.failed" if status == 401 else "enrollment.refused", logging.WARNING,
                 protocol="est", operation=operation, client=client, status=status, reason=reason[:300])
            if not (isinstance(exc, VpncaError) and exc.counted):
                metrics.refused("est", kind)
        return Response(reason + "\n", status_code=status, media_type="text/plain", headers=headers)

    async def do_enroll(request: Request, label: str | None, operation: str) -> Response:
        try:
            profile = profile_for(label)
            requester = authenticate(request, renewal=operation == "simplereenroll")
            media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "application/pkcs10":
                raise EstError(415, "Content-Type must be application/pkcs10 (RFC 7030 4.2.1)")
            csr = decode_csr(await read_body(request, settings.est.max_body_bytes))
        except (VpncaError, HsmError, EstError) as exc:
            return refuse(request, operation, exc)
        try:
            server_key = generate_software_key(SERVER_KEY_ALGORITHM[profile]) if operation == "serverkeygen" \
                else None
            client = request.client.host if request.client else "-"
            enrollment = Enrollment(csr=csr, profile=profile, protocol="est", client=client,
                                    renewal=operation == "simplereenroll",
                                    server_public_key=server_key.public_key() if server_key else None)
            issued: IssuedCertificate = await asyncio.get_running_loop().run_in_executor(
                executor, enroll, ctx.authority, requester, enrollment)
        except (VpncaError, HsmError, EstError) as exc:
            return refuse(request, operation, exc)
        OUTAGES.up("database")
        OUTAGES.up("token")
        log.debug("EST %s issued serial=%s to %s", operation, issued.serial, requester.name)
        if server_key is None:
            return certs_only([issued.certificate])
        return serverkeygen_response(server_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ), issued.certificate)

    cacerts_body = certs_only(ctx.chain).body  # the chain changes only with a restart

    def cacerts(label: str | None) -> Response:
        if label is not None and label not in PROFILES:
            return Response(f"unknown EST label {label!r}\n", status_code=404, media_type="text/plain")
        return Response(cacerts_body, media_type=PKCS7_CERTS, headers={"Content-Transfer-Encoding": "base64"})

    def csrattrs(label: str | None) -> Response:
        try:
            profile = profile_for(label)
        except EstError as exc:
            return Response(exc.reason + "\n", status_code=exc.status, media_type="text/plain")
        return Response(_b64(csr_attributes(profile)), media_type="application/csrattrs",
                        headers={"Content-Transfer-Encoding": "base64"})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """/.well-known/est/[<label>/]<operation>: GET cacerts and csrattrs, POST the enrollments."""
        parts = scope["path"].removeprefix(EST_PREFIX).split("/")
        label, operation = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]) if len(parts) == 2 \
            else (None, "")
        method = scope["method"]
        response: Response
        if operation in ("cacerts", "csrattrs"):
            if method in ("GET", "HEAD"):
                response = cacerts(label) if operation == "cacerts" else csrattrs(label)
            else:
                response = Response("use GET\n", status_code=405, media_type="text/plain",
                                    headers={"Allow": "GET"})
        elif operation in ENROLL_OPERATIONS:
            if method == "POST":
                response = await do_enroll(Request(scope, receive), label, operation)
            else:
                response = Response("use POST\n", status_code=405, media_type="text/plain",
                                    headers={"Allow": "POST"})
        else:
            response = Response("no such EST operation\n", status_code=404, media_type="text/plain")
        await response(scope, receive, send)

    return app


def serverkeygen_response(key_der: bytes, certificate: x509.Certificate) -> Response:
    """RFC 7030 4.4.2: multipart/mixed with the PKCS#8 key and the certs-only PKCS#7."""
    boundary = "est-" + secrets.token_hex(12)
    cert_body = _b64(pkcs7.serialize_certificates([certificate], serialization.Encoding.DER))
    body = (
        f"--{boundary}\r\nContent-Type: application/pkcs8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + _b64(key_der)
        + f"\r\n--{boundary}\r\nContent-Type: {PKCS7_CERTS}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + cert_body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Response(body, media_type=f"multipart/mixed; boundary={boundary}")
