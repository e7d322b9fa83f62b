"""ACME Renewal Information (RFC 9773): the certificate identifier and the suggested renewal window.

A certID is base64url(the AuthorityKeyIdentifier's keyIdentifier) "." base64url(the serial's DER
INTEGER content octets), both without padding. The window is about 2/3 into the certificate's
lifetime, moved by a fixed amount derived from the serial so that a fleet issued together does not
renew together; once an operator asks for early renewal (`vpnca renew-early`, certificates.renew_after)
it starts at that moment, in the past, and is short, so that clients renew now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from enrollment.acme.problems import malformed
from vpnca.store import CertificateRecord, CertStatus

RENEW_AT = 2 / 3  # of the lifetime: the middle of the usual window
WINDOW = 1 / 10  # of the lifetime: the usual window's length
SPREAD = 1 / 15  # of the lifetime: how far (in all) the serial moves the window
EARLY_WINDOW = timedelta(hours=1)  # at most (and at most 1/20 of the lifetime) once renewal is asked for
RETRY_AFTER = timedelta(hours=6)  # at most (and at most 1/20 of the lifetime, at least a minute)


@dataclass(frozen=True)
class CertId:
    key_identifier: bytes
    serial: int

    def __str__(self) -> str:
        length = serial_length(self.serial)
        return f"{_b64url(self.key_identifier)}.{_b64url(self.serial.to_bytes(length, 'big', signed=True))}"


@dataclass(frozen=True)
class SuggestedWindow:
    start: datetime
    end: datetime
    retry_after: timedelta
    early: bool  # an operator asked for renewal (or the certificate is revoked): renew now


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    if not text or any(c in text for c in "=+/") or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def serial_length(serial: int) -> int:
    """Octets of the serial as a DER INTEGER's content (two's complement: room for the sign bit)."""
    return serial.bit_length() // 8 + 1


def cert_id_of(certificate: x509.Certificate) -> CertId:
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("the certificate's AuthorityKeyIdentifier has no keyIdentifier")
    return CertId(aki.key_identifier, certificate.serial_number)


def parse_cert_id(text: str) -> CertId:
    """A certID from a renewalInfo path or a newOrder `replaces`; malformed (400) if it is not one."""
    key_part, dot, serial_part = text.partition(".")
    try:
        if not dot:
            raise ValueError("no '.'")
        key_identifier, serial_octets = _b64url_decode(key_part), _b64url_decode(serial_part)
    except (ValueError, binascii.Error) as exc:
        raise malformed(f"{text[:100]!r} is not a certID (base64url keyIdentifier.base64url serial)") from exc
    serial = int.from_bytes(serial_octets, "big", signed=True)
    if serial <= 0 or len(serial_octets) > 21 or serial_length(serial) != len(serial_octets):
        raise malformed("the certID's serial is not a positive DER INTEGER of at most 20 octets")
    return CertId(key_identifier, serial)


def _fraction(serial: str) -> float:
    """A number in [0, 1) fixed by the serial."""
    return int.from_bytes(hashlib.sha256(serial.encode()).digest()[:8], "big") / 2**64


def suggested_window(record: CertificateRecord, now: datetime) -> SuggestedWindow:
    # measured from issuance, not notBefore: the CA back-dates notBefore for clock skew, which for a
    # short-lived certificate would put the whole window in the past at once
    within = record.not_before <= record.created_at < record.not_after
    issued = record.created_at if within else record.not_before
    lifetime = record.not_after - issued
    retry_after = max(timedelta(minutes=1), min(RETRY_AFTER, lifetime / 20))
    due = record.renew_after
    if record.status == CertStatus.REVOKED and due is None:
        due = record.revoked_at or now
    if due is not None and due <= now:
        return SuggestedWindow(due, due + min(EARLY_WINDOW, lifetime / 20), min(retry_after, EARLY_WINDOW),
                               early=True)
    middle = issued + lifetime * RENEW_AT + lifetime * SPREAD * (_fraction(record.serial) - 0.5)
    start = middle - lifetime * WINDOW / 2
    end = min(middle + lifetime * WINDOW / 2, record.not_after)
    return SuggestedWindow(start, end, retry_after, early=False)


__all__ = ["CertId", "SuggestedWindow", "cert_id_of", "parse_cert_id", "suggested_window"]
