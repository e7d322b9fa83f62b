"""The responder's in-memory store of pre-signed answers: keyed by CertID, bounded in bytes, and still
answering while the database is away."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import core
from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

import ocsp.cache as cache_module
from ocsp.cache import ENTRY_OVERHEAD, PresignedCache
from ocsp.responses import IssuerHashes, error_response, parse_request, plain_cert_id
from ocsp.service import OcspAnswer, OcspService
from vpnca.config import load_settings, render_config
from vpnca.outage import Outages
from vpnca.store import OcspResponseRecord, Store

NOW = datetime.now(UTC).replace(microsecond=0)


def _issuer() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuing CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=9))
            .sign(key, hashes.SHA256()))


ISSUER = _issuer()
HASHES = IssuerHashes.of(ISSUER)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "db").mkdir()
    store = Store(f"sqlite:///{tmp_path / 'db/vpnca.db'}")
    store.init_schema()
    yield store
    store.dispose()


@pytest.fixture
def outages(monkeypatch: pytest.MonkeyPatch) -> Outages:
    fresh = Outages()
    monkeypatch.setattr(cache_module, "OUTAGES", fresh)
    return fresh


def save(store: Store, serials: range, size: int = 1000, alg: str = "sha1") -> None:
    store.save_ocsp_responses([
        OcspResponseRecord(serial=format(s, "x"), hash_algorithm=alg, cert_status="good", this_update=NOW,
                           next_update=NOW + timedelta(days=1), der=os.urandom(size)) for s in serials])


def service(tmp_path: Path, store: Store) -> OcspService:
    home = tmp_path / "home"
    home.mkdir()
    (home / "vpnca.toml").write_text(render_config(domains=["example.com"], ip_ranges=["10.0.0.0/8"],
                                                   token_label="none", softhsm_conf=None, pin_file=None))
    return OcspService(load_settings(home), store, HASHES, None)


def request(serial: int, *, alg: str = "sha1", extensions: list[dict[str, object]] | None = None) -> bytes:
    """An OCSP request built field by field by asn1crypto (hash parameters NULL)."""
    name_hash, key_hash = HASHES.by_algorithm[alg]
    tbs: dict[str, object] = {"request_list": [{"req_cert": {
        "hash_algorithm": {"algorithm": alg}, "issuer_name_hash": name_hash, "issuer_key_hash": key_hash,
        "serial_number": serial}}]}
    if extensions:
        tbs["request_extensions"] = extensions
    der: bytes = aocsp.OCSPRequest({"tbs_request": tbs}).dump()
    return der


def _tlv(tag: int, value: bytes) -> bytes:
    assert len(value) < 0x80
    return bytes([tag, len(value)]) + value


def request_without_hash_parameters(serial: int) -> bytes:
    """The same CertID with the AlgorithmIdentifier's parameters absent (RFC 5754 allows both)."""
    name_hash, key_hash = HASHES.by_algorithm["sha1"]
    cert_id = _tlv(0x30, _tlv(0x30, _tlv(0x06, bytes.fromhex("2b0e03021a"))) + _tlv(0x04, name_hash)
                   + _tlv(0x04, key_hash) + _tlv(0x02, serial.to_bytes(1, "big")))
    return _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, cert_id))))


def _der(tag: int, value: bytes) -> bytes:
    if len(value) < 0x80:
        return bytes([tag, len(value)]) + value
    octets = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + value


_UNKNOWN_OID = _der(0x06, bytes.fromhex("2b06010401868d1f01"))  # 1.3.6.1.4.1.99999.1


def padded(serial: int, padding: int) -> bytes:
    """A request carrying a large unknown, non-critical extension (assembled as bytes: fast)."""
    plain = request(serial)
    request_list = plain[4:]  # OCSPRequest and tbsRequest headers are 2 octets each here
    assert plain[0] == plain[2] == 0x30 and plain[1] < 0x80
    extension = _der(0x30, _UNKNOWN_OID + _der(0x04, _der(0x04, os.urandom(padding))))
    return _der(0x30, _der(0x30, request_list + _der(0xA2, _der(0x30, extension))))


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used(store: Store) -> None:
    save(store, range(1, 401), size=1000)
    cache = PresignedCache(store, HASHES, max_bytes=100 * (1000 + ENTRY_OVERHEAD))
    for serial in range(1, 401):
        assert cache.get(HASHES.key("sha1", serial)) is not None
        cache.get(HASHES.key("sha1", 1))  # kept in use
    assert len(cache.entries) == 100 and cache.size_bytes <= cache.max_bytes
    assert HASHES.key("sha1", 1) in cache.entries and HASHES.key("sha1", 400) in cache.entries
    assert HASHES.key("sha1", 2) not in cache.entries  # least recently used: gone first
    assert cache.size_bytes == sum(len(der) + ENTRY_OVERHEAD for der, _ in cache.entries.values())


def test_the_same_certid_in_different_encodings_is_one_entry(tmp_path: Path, store: Store) -> None:
    save(store, range(7, 8))
    responder = service(tmp_path, store)
    with_null, without_null = request(7), request_without_hash_parameters(7)
    assert with_null != without_null
    assert plain_cert_id(with_null) == plain_cert_id(without_null) == HASHES.key("sha1", 7)
    assert parse_request(padded(7, 300)).requests[0].key == HASHES.key("sha1", 7)
    built = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        HASHES.by_algorithm["sha1"][0], HASHES.by_algorithm["sha1"][1], 7, hashes.SHA1()).build()
    from cryptography.hazmat.primitives.serialization import Encoding

    answers = {responder.respond(der).body for der in (with_null, without_null, padded(7, 300),
                                                       built.public_bytes(Encoding.DER))}
    assert len(answers) == 1 and len(responder.cache.entries) == 1


def test_not_plain_requests_are_read_in_full() -> None:
    nonce = {"extn_id": "nonce", "critical": False, "extn_value": core.OctetString(os.urandom(16)).dump()}
    assert plain_cert_id(request(7, extensions=[nonce])) is None
    assert plain_cert_id(padded(7, 100)) is None
    assert plain_cert_id(request(7)[:-1]) is None and plain_cert_id(request(7) + b"\0") is None
    assert plain_cert_id(b"") is None and plain_cert_id(b"\x30\x84\xff\xff\xff\xff") is None


def test_ten_thousand_distinct_large_requests_do_not_grow_the_cache(tmp_path: Path, store: Store) -> None:
    save(store, range(1, 3))
    responder = service(tmp_path, store)
    first = responder.respond(request(1)).body
    before = _rss()
    for i in range(10_000):
        serial = 1 + i % 2
        body = padded(serial, 16 * 1024 - 120)
        assert len(body) <= 16 * 1024
        answer = responder.respond(body)
        assert answer.kind == "presigned"
        if serial == 1:
            assert answer.body == first
    grown = _rss() - before
    assert len(responder.cache.entries) == 2
    assert responder.cache.size_bytes == 2 * (1000 + ENTRY_OVERHEAD)
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown} bytes"  # 10,000 x 16 KB would be 160 MB


def test_answers_in_memory_are_served_while_the_database_is_down(
        tmp_path: Path, store: Store, outages: Outages, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    save(store, range(1, 4))
    responder = service(tmp_path, store)
    cached = responder.respond(request(1)).body
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # ocsp.cache's clock
    (tmp_path / "db").rename(tmp_path / "away")  # the database goes away: new connections cannot open it
    store.engine.dispose()
    caplog.set_level(logging.INFO, logger="vpnca.events")
    try_later = error_response("try_later")
    for _ in range(1000):
        clock[0] += 0.1  # 100 s of polling
        key = HASHES.key("sha1", 1)
        assert responder.respond_presigned(request(1)) == OcspAnswer(cached, responder.cache.entries[key][1],
                                                                     key=key)
        assert responder.respond(request(2)) == OcspAnswer(try_later, kind="try_later")  # a miss
        assert responder.respond(padded(3, 50)).body == try_later
    downs = [r for r in caplog.records if getattr(r, "event", None) == "dependency.down"]
    assert 1 <= len(downs) <= 2, "the outage is said once a minute, not once a request"

    (tmp_path / "away").rename(tmp_path / "db")  # it is back
    clock[0] += 1.5
    assert responder.respond(request(2)).kind == "presigned"
    ups = [r for r in caplog.records if getattr(r, "event", None) == "dependency.up"]
    assert len(ups) == 1 and not outages.is_down("database")
    assert not [r for r in caplog.records if r.exc_info]
