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

from enrollment.http import BodyTooLarge, read_limited_body
from hsm import generate_software_key
from hsm.token import KeyAlgorithm
from vpnca import metrics
from vpnca.authority import IssuedCertificate
from vpnca.config import EstSettings, Settings
from vpnca.credentials import Requester
from vpnca.enroll import Enrollment
from vpnca.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    Pending,
    PolicyViolation,
    Unavailable,
    VpncaError,
    new_error_id,
    public_message,
)
from vpnca.events import emit
from vpnca.outage import OUTAGES
from vpnca.ports import EstAuthority
from vpnca.profiles import Profile
from vpnca.refusals import record_refusal
from vpnca.x509util import load_csr

log = logging.getLogger("vpnca.est")

EST_PREFIX = "/.well-known/est/"
ENROLL_OPERATIONS = ("simpleenroll", "simplereenroll", "serverkeygen")
PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_WITH_SHA384 = "1.2.840.10045.4.3.3"
# a profile's first key type: what csrattrs asks for (signature algorithm; key algorithm and curve)
CSR_ATTRIBUTES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "ec-p256": (OID_ECDSA_WITH_SHA256, (OID_EC_PUBLIC_KEY, "1.2.840.10045.3.1.7")),
    "ec-p384": (OID_ECDSA_WITH_SHA384, (OID_EC_PUBLIC_KEY, "1.3.132.0.34")),
    "rsa": ("1.2.840.113549.1.1.11", None),  # sha256WithRSAEncryption
    "ed25519": ("1.3.101.112", None),  # id-Ed25519
}
SERVER_KEY_ALGORITHM: dict[str, KeyAlgorithm] = {  # what serverkeygen makes for a key type
    "ec-p256": "ec-p256", "ec-p384": "ec-p384", "rsa": "rsa-3072"}
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
    """An HTTP error of the protocol itself (size, media type, label) with its status and a fixed reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


# The one error map of EST: core error -> HTTP status (RFC 7030 4.2.3). The first match wins, so
# subclasses come before their bases; anything not here is a bug: 500 with the fixed text and an id.
EST_STATUS: tuple[tuple[type[VpncaError], int], ...] = (
    (Pending, 202),
    (NotAuthenticated, 401),
    (NotAuthorized, 403),
    (PolicyViolation, 403),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
)


def status_for(exc: BaseException) -> int:
    return next((status for kind, status in EST_STATUS if isinstance(exc, kind)), 500)


@dataclass
class EstContext:
    door: EstAuthority
    settings: EstSettings
    bootstrap_cas: list[x509.Certificate] = field(default_factory=list)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def certs_only(certs: list[x509.Certificate]) -> Response:
    body = _b64(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))
    return Response(body, media_type=PKCS7_CERTS, headers={"Content-Transfer-Encoding": "base64"})


def csr_attributes(profile: Profile) -> bytes:
    """What the profile wants: its first key type (an EC key on its curve, with ECDSA and SHA-256/384),
    no challenge password."""
    signature, key = CSR_ATTRIBUTES[profile.preferred_key_type]
    items = [_AttrOrOid(name="oid", value=core.ObjectIdentifier(signature))]
    if key is not None:
        items.append(_AttrOrOid(name="attribute", value=_Attribute({
            "type": key[0], "values": [core.Any.load(core.ObjectIdentifier(key[1]).dump())]})))
    der: bytes = CsrAttrs(items).dump()
    return der


def server_key_algorithm(profile: Profile) -> KeyAlgorithm:
    """serverkeygen makes the profile's first key type it can make (EC, or RSA-3072)."""
    made = [SERVER_KEY_ALGORITHM[k] for k in profile.key_types if k in SERVER_KEY_ALGORITHM]
    if not made:
        raise BadRequest(f"profile {profile.name} has no key type serverkeygen makes")
    return made[0]


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
    settings = ctx.settings
    executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="est")

    def client_certificate(request: Request) -> x509.Certificate | None:
        tls = request.scope.get("extensions", {}).get("tls", {})
        chain = tls.get("client_cert_chain") or []
        if chain:
            return x509.load_pem_x509_certificate(chain[0].encode())
        header = request.headers.get(settings.client_cert_header)
        if header:
            peer = request.client.host if request.client else ""
            if peer not in settings.trusted_proxies:
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
                return ctx.door.certificate_requester(cert, ctx.bootstrap_cas)
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
        return ctx.door.token_requester(token_id, secret, protocol="est")

    def profile_for(label: str | None) -> Profile:
        """The label's profile (the default without one), if EST may issue it; else 404."""
        try:
            profile = ctx.door.profile(label or settings.default_profile)
        except BadRequest:
            raise EstError(404, f"unknown EST label {label!r}") from None
        if "est" not in profile.protocols:
            raise EstError(404, f"unknown EST label {label!r}")
        return profile

    def refuse(request: Request, operation: str, exc: Exception, profile: str = "") -> Response:
        """The RFC 7030 answer to a refusal: the status from EST_STATUS, a fixed text and the correlation
        id of the one log line (the core's, when it decided) that holds the detail."""
        client = request.client.host if request.client else "-"
        if isinstance(exc, EstError):  # the protocol's own refusals
            kind = {413: "too_large", 415: "media_type", 404: "not_found"}.get(exc.status, "bad_request")
            error_id = new_error_id()
            emit("enrollment.refused", logging.WARNING, protocol="est", operation=operation, client=client,
                 status=exc.status, reason=kind, detail=exc.reason, error_id=error_id)
            metrics.refused("est", kind, profile)
            return _text(exc.status, f"{exc.reason} (id {error_id})", exc.headers, error_id)
        status = status_for(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, Pending):
            headers["Retry-After"] = str(exc.retry_after)
        elif status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="vpnca EST"'
        elif status == 503:
            headers["Retry-After"] = str(settings.retry_after_seconds)
        error_id = record_refusal(exc, protocol="est", profile=profile, operation=operation, client=client,
                                  status=status,
                                  event="authentication.failed" if status == 401 else "enrollment.refused")
        if isinstance(exc, Pending):  # no refusal: the client polls with the request's own id
            return _text(status, str(exc), headers, error_id)
        return _text(status, public_message(exc, error_id), headers, error_id)

    async def do_enroll(request: Request, label: str | None, operation: str) -> Response:
        profile = ""
        try:
            chosen = profile_for(label)
            profile = chosen.name
            requester = authenticate(request, renewal=operation == "simplereenroll")
            media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "application/pkcs10":
                raise EstError(415, "Content-Type must be application/pkcs10 (RFC 7030 4.2.1)")
            csr = decode_csr(await read_body(request, settings.max_body_bytes))
        except (VpncaError, EstError) as exc:
            return refuse(request, operation, exc, profile)
        try:
            server_key = generate_software_key(server_key_algorithm(chosen)) if operation == "serverkeygen" \
                else None
            client = request.client.host if request.client else "-"
            enrollment = Enrollment(csr=csr, profile=profile, protocol="est", client=client,
                                    renewal=operation == "simplereenroll",
                                    server_public_key=server_key.public_key() if server_key else None)
            issued: IssuedCertificate = await asyncio.get_running_loop().run_in_executor(
                executor, ctx.door.enroll, requester, enrollment)
        except Exception as exc:  # noqa: BLE001 - every failure is answered from the one map
            return refuse(request, operation, exc, profile)
        OUTAGES.up("database")
        OUTAGES.up("token")
        log.debug("EST %s issued serial=%s to %s", operation, issued.serial, requester.name)
        if server_key is None:
            return certs_only([issued.certificate])
        return serverkeygen_response(server_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ), issued.certificate)

    cacerts_body = certs_only(ctx.door.chain()).body  # the chain changes only with a restart

    def cacerts(label: str | None) -> Response:
        if label is not None:
            try:
                profile_for(label)
            except EstError as exc:
                return Response(exc.reason + "\n", status_code=exc.status, media_type="text/plain")
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


def _text(status: int, text: str, headers: dict[str, str], error_id: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain",
                    headers={**headers, "X-Request-ID": error_id})


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
