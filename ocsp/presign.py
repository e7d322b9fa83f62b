"""Pre-signing at the token's pace: each answer's ResponseData is encoded by hand around the parts all
answers of a run share (the responder, the times, the issuer's CertID hashes), so that signing, not
encoding, is what a pre-signing run spends its time on; `vpnca serve` workers split the backlog by
serial (`Share`), each signing with its own token session. Each page's answers are written by a second
thread while the next page is signed (`PageWriter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

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
    writing: float = 0.0  # waiting for the writer thread (the database's work it did not hide)
    written: float = 0.0  # the writer thread's own time, beside the signing
    passes: int = 0


class PageWriter:
    """Writes each page's answers on a thread beside the signing, one page behind it. The token call
    releases the GIL, and so does the database driver while it steps and commits: the database's work,
    its fsync and its write lock's waits overlap the next page's signing. The rows come ready for the
    driver (`answer_values`), so that the thread holds the GIL as little as it can (a thread running
    Python makes the signing wait for the GIL after each signature). A failed write is raised by the next
    `write` or by leaving the block."""

    def __init__(self, save: Callable[[list[tuple[Any, ...]]], None], stats: PresignStats) -> None:
        self._save, self._stats = save, stats
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="presign-writer")
        self._pending: Future[None] | None = None

    def write(self, values: list[tuple[Any, ...]]) -> None:
        self.wait()
        self._pending = self._executor.submit(self._timed_save, values)

    def wait(self) -> None:
        """Until the page in flight is written."""
        if self._pending is not None:
            started = time.perf_counter()
            pending, self._pending = self._pending, None
            pending.result()
            self._stats.writing += time.perf_counter() - started

    def _timed_save(self, values: list[tuple[Any, ...]]) -> None:
        started = time.perf_counter()
        self._save(values)
        self._stats.written += time.perf_counter() - started

    def __enter__(self) -> PageWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # finished before the error in flight goes on
        finally:
            self._executor.shutdown()


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
        self._good_frames: dict[tuple[str, int], tuple[bytes, bytes]] = {}  # the bytes around a good serial

    def response_data(self, algorithm: str, serial: int, status: Status) -> bytes:
        if status.state != "good":
            return self._encode(algorithm, positive_integer(serial), cert_status(status))
        value = positive_integer(serial)
        frame = self._good_frames.get((algorithm, len(value)))
        if frame is None:  # what surrounds any serial of this length: the answers differ in it alone
            zeros = self._encode(algorithm, bytes(len(value)), GOOD)
            ones = self._encode(algorithm, b"\xff" * len(value), GOOD)
            start = next(i for i, (a, b) in enumerate(zip(zeros, ones, strict=True)) if a != b)
            frame = self._good_frames[(algorithm, len(value))] = (zeros[:start], zeros[start + len(value):])
        return frame[0] + value + frame[1]

    def _encode(self, algorithm: str, serial_der: bytes, status_der: bytes) -> bytes:
        cert_id = _tlv(0x30, self._cert_id_heads[algorithm] + serial_der)
        single = _tlv(0x30, cert_id + status_der + self._times)
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
