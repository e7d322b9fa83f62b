"""Small X.509 helpers shared by the CA and its front ends."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vpnca.errors import BadRequest

MAX_CSR_BYTES = 64 * 1024
_HEX = re.compile(r"^[0-9a-f]{1,40}$")


def random_serial() -> int:
    """A positive serial of 159 random bits: at least 64 bits of entropy, at most 20 octets."""
    while True:
        serial = secrets.randbits(159)
        if serial >= 1 << 64:
            return serial


def serial_hex(serial: int) -> str:
    """Serials are shown and stored as lowercase hex without colons."""
    return format(serial, "x")


def parse_serial(text: str) -> str:
    """Normalise an operator-typed serial (hex, colons allowed) to its stored form."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x").lstrip("0") or "0"
    if not _HEX.match(cleaned):
        raise BadRequest(f"not a hexadecimal serial: {text!r}")
    return cleaned


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR; BadRequest for anything else."""
    if len(data) > MAX_CSR_BYTES:
        raise BadRequest(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise BadRequest(f"malformed CSR: {exc}") from exc


def to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def distribution_points(url: str) -> list[x509.DistributionPoint]:
    """One distribution point at `url`: the shape of a CRLDistributionPoints or FreshestCRL value."""
    return [x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
                                   reasons=None, crl_issuer=None)]


# -- DER pieces of a CRL (RFC 5280 5.1), so that entries are encoded once, at revocation -----------

# CRLReason codes (RFC 5280 5.3.1); `unspecified` is never written (the entry omits the extension)
REASON_CODES = {
    "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3, "superseded": 4,
    "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8, "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
_OID_REASON_CODE = bytes.fromhex("0603551d15")  # 2.5.29.21
_OID_INVALIDITY_DATE = bytes.fromhex("0603551d18")  # 2.5.29.24


def der_tlv(tag: int, value: bytes) -> bytes:
    """One DER element: tag, definite length, value."""
    length = len(value)
    if length < 0x80:
        return bytes((tag, length)) + value
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + value


def der_integer(value: int) -> bytes:
    return der_tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def der_time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, UTC."""
    moment = moment.astimezone(UTC)
    if moment.year < 2050:
        return der_tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return der_generalized_time(moment)


def der_generalized_time(moment: datetime) -> bytes:
    return der_tlv(0x18, moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def crl_entry_der(serial: int, revoked_at: datetime, reason: str | None,
                  invalidity_date: datetime | None = None) -> bytes:
    """The DER of one revokedCertificates entry: serial, revocation date, CRLReason (left out for
    `unspecified`, as in the OCSP answer) and InvalidityDate."""
    extensions = b""
    if reason and reason != "unspecified":
        code = der_tlv(0x0A, bytes((REASON_CODES[reason],)))  # ENUMERATED
        extensions += der_tlv(0x30, _OID_REASON_CODE + der_tlv(0x04, code))
    if invalidity_date is not None:
        extensions += der_tlv(0x30, _OID_INVALIDITY_DATE
                              + der_tlv(0x04, der_generalized_time(invalidity_date)))
    body = der_integer(serial) + der_time(revoked_at)
    return der_tlv(0x30, body + (der_tlv(0x30, extensions) if extensions else b""))
