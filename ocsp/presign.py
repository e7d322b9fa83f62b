"""Pre-signing at the token's pace: each answer's ResponseData is encoded by hand around the parts all
answers of a run share (the responder, the times, the issuer's CertID hashes), so that signing, not
encoding, is what a pre-signing run spends its time on; `vpnca serve` workers split the backlog by
serial (`Share`), each signing with its own token session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ocsp.responses import IssuerHashes, Status, _tlv

GOOD = b"\x80\x00"  # certStatus good: [0] IMPLICIT NULL
UNKNOWN = b"\x82\x00"  # [2] IMPLICIT UnknownInfo (NULL)
CRL_REASON_CODES = {  # RFC 5280 5.3.1 CRLReason, by the names vpnca stores
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3, "superseded": 4,
    "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8, "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
SUFFIXES = 256  # a share is a set of the serials' last two hex digits


class Signable(Protocol):
    """What an answer says of a certificate (a CertificateRecord or a backlog entry)."""

    @property
    def serial(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def revocation_reason(self) -> str | None: ...


@dataclass(frozen=True)
class Share:
    """Worker `index` of `count` pre-signs the serials whose last two hex digits mod `count` are `index`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count <= SUFFIXES:
            raise ValueError(f"no share {self.index} of {self.count}")

    def suffixes(self) -> list[str] | None:
        """The serial endings of this share; None: every serial."""
        if self.count == 1:
            return None
        return [f"{value:02x}" for value in range(SUFFIXES) if value % self.count == self.index]


@dataclass
class PresignStats:
    """What a pre-signing run did and where its time went (seconds), for the benchmark."""

    certificates: int = 0
    responses: int = 0
    reading: float = 0.0  # the backlog queries
    encoding: float = 0.0  # the ResponseData
    signing: float = 0.0  # the token's signature and the response around it
    writing: float = 0.0  # the database
    passes: int = 0


def generalized_time(moment: datetime) -> bytes:
    """DER GeneralizedTime of a UTC moment in whole seconds."""
    return _tlv(0x18, moment.strftime("%Y%m%d%H%M%SZ").encode())


def positive_integer(value: int) -> bytes:
    """DER INTEGER of a positive value (a leading zero octet when the top bit is set)."""
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


class ResponseEncoder:
    """ResponseData (RFC 6960 4.2.1) with one SingleResponse, for one responder key, issuer and
    (producedAt, thisUpdate, nextUpdate): the bytes asn1crypto would write, built in microseconds."""

    def __init__(self, issuer_hashes: IssuerHashes, responder_key_hash: bytes, produced_at: datetime,
                 this_update: datetime, next_update: datetime) -> None:
        self.issuer_hashes = issuer_hashes
        self.this_update, self.next_update = this_update, next_update
        self._cert_id_heads: dict[str, bytes] = {}
        for algorithm in issuer_hashes.by_algorithm:
            cert_id = issuer_hashes.cert_id(algorithm, 1)
            self._cert_id_heads[algorithm] = b"".join(
                cert_id[part].dump() for part in ("hash_algorithm", "issuer_name_hash", "issuer_key_hash"))
        self._times = generalized_time(this_update) + _tlv(0xA0, generalized_time(next_update))
        self._head = _tlv(0xA2, _tlv(0x04, responder_key_hash)) + generalized_time(produced_at)

    def response_data(self, algorithm: str, serial: int, status: Status) -> bytes:
        cert_id = _tlv(0x30, self._cert_id_heads[algorithm] + positive_integer(serial))
        single = _tlv(0x30, cert_id + cert_status(status) + self._times)
        return _tlv(0x30, self._head + _tlv(0x30, single))


def cert_status(status: Status) -> bytes:
    """CertStatus: good, or revoked [1] IMPLICIT RevokedInfo (time; reason unless unspecified, as in the
    CRL entry), or unknown."""
    if status.state == "good":
        return GOOD
    if status.state != "revoked":
        return UNKNOWN
    assert status.revoked_at is not None
    info = generalized_time(status.revoked_at.replace(microsecond=0))
    if status.reason and status.reason != "unspecified":
        info += _tlv(0xA0, _tlv(0x0A, bytes([CRL_REASON_CODES[status.reason]])))
    return _tlv(0xA1, info)
