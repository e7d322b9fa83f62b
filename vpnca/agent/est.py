"""The EST client (RFC 7030): trust bootstrap, cacerts, simpleenroll with a token, simplereenroll with the
current certificate and key (TLS client authentication).

Trust (RFC 7030 4.1.1): with a CA file the server's chain is verified against it from the first byte.
With a pinned SHA-256 fingerprint, /cacerts is fetched once without verification (that answer carries
no secret), one of the CA certificates must have the fingerprint, and it becomes the trust anchor
every later connection is verified against; the token is sent only over such a connection.

A key on a PKCS#11 token cannot sign a TLS handshake of Python's ssl module, so re-enrollment with such
a key goes through strongSwan's `pki --est` (its own TLS stack signs with the token key through its
pkcs11 plugin; the PIN goes in on its stdin, never on the command line).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from vpnca.agent.errors import AgentError, NeedsEnrollment, TrustError, UsageError

TIMEOUT = 30.0
PKI = "pki"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex without colons."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def normalise_fingerprint(text: str) -> str:
    value = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"--ca-fingerprint must be a SHA-256 fingerprint (64 hex digits), not {text!r}")
    return value


def parse_certs_only(body: bytes) -> list[x509.Certificate]:
    """A base64 (or DER) PKCS#7 certs-only answer."""
    compact = b"".join(body.split())
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        der = body
    try:
        return list(pkcs7.load_der_pkcs7_certificates(der))
    except ValueError as exc:
        raise AgentError(f"the EST server's answer is not a PKCS#7 certs-only message: {exc}") from exc


def pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class Endpoint:
    """https://host[:port][/prefix]: the EST server (the path before /.well-known/est)."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme != "https" or not parts.hostname:
            raise UsageError(f"--server must be an https:// URL, not {url!r}")
        prefix = parts.path.rstrip("/")
        prefix = prefix.removesuffix("/.well-known/est")
        return cls(parts.hostname, parts.port or 443, prefix)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.prefix}"

    def path(self, operation: str, label: str | None = None) -> str:
        return f"{self.prefix}/.well-known/est/" + (f"{label}/" if label else "") + operation


@dataclass
class Answer:
    status: int
    body: bytes
    retry_after: str | None

    def reason(self) -> str:
        return self.body.decode(errors="replace").strip()[:300] or f"HTTP {self.status}"


def verified_context(anchor_pem: bytes, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """TLS verified against the trust anchor only (not the system's CAs), host name checked."""
    context = ssl.create_default_context(cadata=anchor_pem.decode())
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _request(endpoint: Endpoint, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, context=context, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.read(), response.getheader("Retry-After"))
    finally:
        conn.close()


def _transport_error(endpoint: Endpoint, exc: Exception) -> AgentError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TrustError(f"{endpoint.url}: the server's certificate does not verify against the trust "
                          f"anchor: {exc.verify_message}")
    return AgentError(f"{endpoint.url}: {type(exc).__name__}: {exc}")


def bootstrap_anchor(endpoint: Endpoint, pinned: str) -> x509.Certificate:
    """RFC 7030 4.1.1 bootstrap: /cacerts without verification, then the CA certificate whose SHA-256
    fingerprint is `pinned`. Nothing but this GET is sent before it matched."""
    try:
        answer = _request(endpoint, _unverified_context(), "GET", endpoint.path("cacerts"))
    except (OSError, http.client.HTTPException) as exc:
        raise _transport_error(endpoint, exc) from exc
    if answer.status != 200:
        raise AgentError(f"{endpoint.url}: /cacerts answered {answer.status}: {answer.reason()}")
    certs = parse_certs_only(answer.body)
    for cert in certs:
        if fingerprint(cert) == pinned:
            return cert
    seen = ", ".join(f"{c.subject.rfc4514_string()} {fingerprint(c)}" for c in certs) or "none"
    raise TrustError(f"no CA certificate from {endpoint.url} has the SHA-256 fingerprint {pinned} "
                     f"(it sent: {seen}); nothing else was sent: check --ca-fingerprint")


class EstClient:
    """EST over TLS verified against the trust anchor."""

    def __init__(self, endpoint: Endpoint, anchor_pem: bytes) -> None:
        self.endpoint = endpoint
        self.anchor_pem = anchor_pem

    def _call(self, method: str, path: str, context: ssl.SSLContext, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> Answer:
        try:
            return _request(self.endpoint, context, method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(self.endpoint, exc) from exc

    def renewal_window_start(self, certificate: x509.Certificate) -> datetime | None:
        """When the CA suggests renewing `certificate` (ACME Renewal Information, RFC 9773: a GET on
        the same HTTPS server, by certID = keyIdentifier.serial); None when it cannot say."""
        try:
            aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            if aki.key_identifier is None:
                return None
            serial = certificate.serial_number
            octets = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
            cert_id = f"{_b64url(aki.key_identifier)}.{_b64url(octets)}"
            answer = self._call("GET", f"/acme/renewal-info/{cert_id}", verified_context(self.anchor_pem))
            if answer.status != 200:
                return None
            start = datetime.fromisoformat(json.loads(answer.body)["suggestedWindow"]["start"])
        except (AgentError, x509.ExtensionNotFound, ValueError, KeyError, TypeError):
            return None
        return start if start.tzinfo is not None else start.replace(tzinfo=UTC)

    def cacerts(self) -> list[x509.Certificate]:
        answer = self._call("GET", self.endpoint.path("cacerts"), verified_context(self.anchor_pem))
        if answer.status != 200:
            raise AgentError(f"{self.endpoint.url}: /cacerts answered {answer.status}: {answer.reason()}")
        return parse_certs_only(answer.body)

    def simpleenroll(self, csr: x509.CertificateSigningRequest, token: str, profile: str) -> x509.Certificate:
        headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64",
                   "Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
        body = base64.b64encode(csr.public_bytes(Encoding.DER))
        answer = self._call("POST", self.endpoint.path("simpleenroll", profile),
                            verified_context(self.anchor_pem), body, headers)
        return self._issued(answer, "simpleenroll")

    def simplereenroll(self, csr: x509.CertificateSigningRequest, cert_file: Path, key_file: Path,
                       *, expired: bool) -> x509.Certificate:
        headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
        try:
            context = verified_context(self.anchor_pem, (cert_file, key_file))
        except (ssl.SSLError, OSError) as exc:
            raise AgentError(f"cannot use {cert_file} and {key_file} for TLS: {exc}") from exc
        try:
            answer = _request(self.endpoint, context, "POST", self.endpoint.path("simplereenroll"),
                              base64.b64encode(csr.public_bytes(Encoding.DER)), headers)
        except ssl.SSLCertVerificationError as exc:
            raise _transport_error(self.endpoint, exc) from exc
        except ssl.SSLError as exc:
            if expired:  # the server's TLS layer refused the expired client certificate
                raise NeedsEnrollment(f"the CA refused the expired certificate in the TLS handshake "
                                      f"({exc.reason or exc})") from exc
            raise _transport_error(self.endpoint, exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(self.endpoint, exc) from exc
        return self._issued(answer, "simplereenroll", renewal=True)

    def _issued(self, answer: Answer, operation: str, *, renewal: bool = False) -> x509.Certificate:
        if answer.status == 200:
            certs = parse_certs_only(answer.body)
            if not certs:
                raise AgentError(f"{operation}: the EST server answered no certificate")
            return certs[0]
        if answer.status == 202:
            raise AgentError(f"{operation}: the request waits for an operator's approval "
                             f"(retry after {answer.retry_after or '?'} s)")
        if renewal and answer.status in (401, 403):
            raise NeedsEnrollment(f"the CA refused re-enrollment: {answer.reason()}")
        if answer.status in (401, 403):
            raise NeedsEnrollment(f"the CA refused the enrollment ({answer.status}): {answer.reason()}")
        raise AgentError(f"{operation}: the EST server answered {answer.status}: {answer.reason()}")


def pki_reenroll(endpoint: Endpoint, anchor: Path, cert_file: Path, key_id: str, module: str, pin: str,
                 csr: x509.CertificateSigningRequest, workdir: Path, *, expired: bool) -> x509.Certificate:
    """simplereenroll with a key on a PKCS#11 token: `pki --est --cert CERT --keyid HANDLE`."""
    tool = shutil.which(PKI) or ("/usr/bin/pki" if os.access("/usr/bin/pki", os.X_OK) else None)
    if tool is None:
        raise AgentError("re-enrollment with a PKCS#11 key needs strongSwan's `pki` (package strongswan-pki)")
    with tempfile.TemporaryDirectory(prefix="pki-est-", dir=workdir) as tmp:
        conf = Path(tmp) / "strongswan.conf"
        conf.write_text("pki {\n  plugins {\n    pkcs11 {\n      modules {\n        agent {\n"
                        f"          path = {module}\n        }}\n      }}\n    }}\n"
                        "    tpm {\n      load = no\n    }\n  }\n}\n")
        request = Path(tmp) / "request.der"
        request.write_bytes(csr.public_bytes(Encoding.DER))
        env = {**os.environ, "STRONGSWAN_CONF": str(conf)}
        try:
            # no controlling terminal: pki's getpass() then reads the PIN from stdin
            result = subprocess.run(
                [tool, "--est", "--url", endpoint.url, "--cacert", str(anchor), "--cert", str(cert_file),
                 "--keyid", key_id, "--in", str(request), "--outform", "pem"],
                input=pin + "\n", capture_output=True, text=True, env=env, timeout=120, check=False,
                start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AgentError(f"pki --est failed: {exc}") from exc
    if result.returncode == 0 and "BEGIN CERTIFICATE" in result.stdout:
        return x509.load_pem_x509_certificates(result.stdout.encode())[0]
    detail = " | ".join(line.strip() for line in result.stderr.splitlines()
                        if "EST request failed" in line or "HTTP" in line or "failed" in line.lower())[-400:]
    code = next((int(w) for line in result.stderr.splitlines() if "EST request failed: HTTP" in line
                 for w in line.split() if w.isdigit()), None)
    if code in (401, 403) or (expired and code is None):
        raise NeedsEnrollment(f"the CA refused re-enrollment (pki --est: {detail or 'no answer'})")
    raise AgentError(f"pki --est re-enrollment failed ({result.returncode}): "
                     f"{detail or result.stderr[-400:]}")

