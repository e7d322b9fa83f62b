"""The lint shape: a verdict kept for a leaf's shape is the verdict pkilint gives the leaf itself."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnca.leaf import LeafSpec, build_leaf
from vpnca.lint import (
    LintFailed,
    findings,
    lint_before_signing,
    shape_key,
    shape_serial,
    shape_validity,
    verdicts,
)
from vpnca.profiles import Profile

CA_KEY = ec.generate_private_key(ec.SECP384R1())
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lint test CA")])
START = datetime(2026, 11, 27, 12, tzinfo=UTC)
DEVICE = Profile(name="device", extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
                 key_usages=frozenset({"digitalSignature"}), lifetime=timedelta(hours=24),
                 key_types=("ec-p256",), approval=False, protocols=frozenset({"est"}),
                 server_names_only=False, lint_accepted=frozenset())
SIGNS_CERTIFICATES = replace(DEVICE, key_usages=frozenset({"digitalSignature", "keyCertSign"}))


def spec_for(name: str, profile: Profile = DEVICE) -> LeafSpec:
    return LeafSpec(subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]), issuer=ISSUER,
                    profile=profile, sans=(x509.DNSName(name),),
                    extensions=(x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()),))


def codes(spec: LeafSpec, key: CertificatePublicKeyTypes, serial: int, not_before: datetime,
          not_after: datetime) -> set[str]:
    certificate = build_leaf(spec, key, serial, not_before, not_after).sign(CA_KEY, hashes.SHA384())
    return {f.code for f in findings(certificate.public_bytes(Encoding.DER))
            if f.severity in ("ERROR", "FATAL", "WARNING")}


CASES: list[tuple[str, CertificatePublicKeyTypes, int, datetime, datetime]] = [  # clean ones first
    ("vpn.example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), (1 << 158) + 12345, START,
     START + timedelta(hours=24)),
    ("vpn.example.com", ec.generate_private_key(ec.SECP384R1()).public_key(), (1 << 100) + 7, START,
     START + timedelta(days=9000)),  # notAfter after 2049: GeneralizedTime
    ("vpn.example.com", rsa.generate_private_key(65537, 3072).public_key(), 1 << 63, START,
     START + timedelta(hours=1)),
    ("vpn.example.com", ed25519.Ed25519PrivateKey.generate().public_key(), 1 << 70, START,
     START + timedelta(hours=1)),
    # and ones RFC 5280 refuses
    ("x" * 70 + ".example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), 99, START,
     START + timedelta(hours=1)),  # a label over 63 characters
    ("bad name.example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), 5, START,
     START + timedelta(seconds=1)),  # a space in a dNSName
]


@pytest.mark.parametrize("name,key,serial,not_before,not_after", CASES)
def test_the_shape_gets_the_findings_of_the_certificate(name, key, serial, not_before, not_after) -> None:  # type: ignore[no-untyped-def]
    for profile in (DEVICE, SIGNS_CERTIFICATES):
        spec = spec_for(name, profile)
        shape = shape_key(key)
        assert shape is not None
        real = codes(spec, key, serial, not_before, not_after)
        shaped = codes(spec, shape[1], shape_serial(serial), *shape_validity(not_before, not_after))
        assert real == shaped


def test_the_cases_are_not_all_clean() -> None:
    found = [codes(spec_for(n), k, s, b, a) for n, k, s, b, a in CASES]
    assert not any(found[:4]) and found[4] and found[5]
    name, key, serial, not_before, not_after = CASES[0]
    assert codes(spec_for(name, SIGNS_CERTIFICATES), key, serial, not_before, not_after)


def test_the_validity_shape_keeps_encoding_and_order() -> None:
    utc, generalized = datetime(2030, 1, 1, tzinfo=UTC), datetime(2051, 1, 1, tzinfo=UTC)
    start, end = shape_validity(utc, generalized)
    assert start.year < 2050 <= end.year
    start, end = shape_validity(utc, utc + timedelta(hours=3))
    assert start < end and end.year < 2050
    assert shape_serial(1 << 158) == shape_serial(1 << 64) != shape_serial(1 << 159)


def test_a_renewal_with_a_new_key_reuses_the_verdict_and_a_new_name_does_not() -> None:
    spec = spec_for("gw1.example.net")
    misses, hits = verdicts.misses, verdicts.hits
    for hours in (1, 5):  # another key, serial and validity, an equal spec: the same shape
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        lint_before_signing(spec_for("gw1.example.net") if hours > 1 else spec, key, (1 << 150) + hours,
                            START + timedelta(hours=hours), START + timedelta(hours=hours + 24), CA_KEY,
                            hashes.SHA384())
    assert (verdicts.misses - misses, verdicts.hits - hits) == (1, 1)
    lint_before_signing(spec_for("gw2.example.net"), ec.generate_private_key(ec.SECP256R1()).public_key(),
                        1 << 158, START, START + timedelta(hours=24), CA_KEY, hashes.SHA384())
    assert verdicts.misses - misses == 2


@pytest.mark.parametrize("spec", [spec_for("y" * 70 + ".example.com"), spec_for("ok.example.com",
                                                                                   SIGNS_CERTIFICATES)])
def test_a_kept_refusal_still_refuses(spec: LeafSpec) -> None:
    for _ in range(2):  # linted, then from the kept verdict
        with pytest.raises(LintFailed, match="pkix"):
            lint_before_signing(spec, ec.generate_private_key(ec.SECP256R1()).public_key(), 1 << 150, START,
                                START + timedelta(hours=1), CA_KEY, hashes.SHA384())


@pytest.mark.parametrize("key,kind", [
    (ec.generate_private_key(ec.SECP384R1()).public_key(), ec.EllipticCurvePublicKey),
    (rsa.generate_private_key(65537, 2048).public_key(), rsa.RSAPublicKey),
    (ed25519.Ed25519PrivateKey.generate().public_key(), ed25519.Ed25519PublicKey),
])
def test_every_key_type_the_profiles_allow_has_a_stand_in(key, kind) -> None:  # type: ignore[no-untyped-def]
    shape = shape_key(key)
    assert shape is not None and isinstance(shape[1], kind) and shape[1] != key
