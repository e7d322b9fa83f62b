"""The hand-made ResponseData of pre-signing is byte for byte asn1crypto's; shares split the serials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import ocsp as aocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ocsp.presign import ResponseEncoder, Share, positive_integer
from ocsp.responses import IssuerHashes, Status, single_response
from vpnca.store import migrations


def issuer() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "presign test CA")])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA384()))


def reference_response_data(encoder: ResponseEncoder, algorithm: str, serial: int, status: Status,
                            responder_key_hash: bytes, produced_at: datetime) -> bytes:
    """The same ResponseData through asn1crypto alone (what the tests compare the encoder with)."""
    single = single_response(encoder.issuer_hashes.cert_id(algorithm, serial), status, encoder.this_update,
                             encoder.next_update)
    data = aocsp.ResponseData({"responder_id": aocsp.ResponderId(name="by_key", value=responder_key_hash),
                               "produced_at": produced_at, "responses": [single]})
    return bytes(data.dump())


@pytest.mark.parametrize("status", [
    Status("good"),
    Status("unknown"),
    Status("revoked", datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC), "keyCompromise"),
    Status("revoked", datetime(2026, 11, 2, tzinfo=UTC), "unspecified"),
    Status("revoked", datetime(2026, 11, 3, tzinfo=UTC), "certificateHold"),
])
def test_encoder_writes_what_asn1crypto_writes(status: Status) -> None:
    hashes_ = IssuerHashes.of(issuer())
    key_hash = bytes(range(20))
    now = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    encoder = ResponseEncoder(hashes_, key_hash, now, now, now + timedelta(hours=24))
    for serial in (1, 0x7F, 0x80, 0xFF, 0x100, 2**63, (2**127) | 0x1234, 2**159 - 1):
        for algorithm in ("sha1", "sha256"):
            expected = reference_response_data(encoder, algorithm, serial, status, key_hash, now)
            assert encoder.response_data(algorithm, serial, status) == expected, (serial, algorithm)


def test_positive_integers_keep_their_sign_bit_clear() -> None:
    assert positive_integer(0x7F) == b"\x02\x01\x7f"
    assert positive_integer(0x80) == b"\x02\x02\x00\x80"


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16])
def test_the_shares_of_the_workers_take_every_serial_ending_exactly_once(count: int) -> None:
    shares = [Share(i, count).suffixes() for i in range(count)]
    if count == 1:
        assert shares == [None]
        return
    endings = [s for share in shares for s in share or []]
    assert sorted(endings) == [f"{v:02x}" for v in range(256)]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Share(count, count)


def test_the_quick_schema_check_knows_the_same_head_as_alembic() -> None:
    assert migrations.head_without_alembic() == migrations.head_revision()
