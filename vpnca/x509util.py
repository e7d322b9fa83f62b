"""Small X.509 helpers shared by the CA and its front ends."""

from __future__ import annotations

import re
import secrets

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
