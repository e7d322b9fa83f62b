"""The lint shape: a verdict kept for a certificate's shape is the verdict pkilint gives the certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from vpnca.lint import (
    LintFailed,
    findings,
    lint_before_signing,
    shape_key,
    shape_serial,
    shape_validity,
    verdicts,
)

CA_KEY = ec.generate_private_key(ec.SECP384R1())
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lint test CA")])
START = datetime(2026, 11, 27, 12, tzinfo=UTC)


def builder_for(name: str, *, critical_ski: bool = False):  # type: ignore[no-untyped-def]
    def build(key: CertificatePublicKeyTypes, serial: int, not_before: datetime,
              not_after: datetime) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(ISSUER).public_key(key).serial_number(serial)
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=critical_ski)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
    return build


def codes(build, key, serial, not_before, not_after) -> set[str]:  # type: ignore[no-untyped-def]
    der = build(key, serial, not_before, not_after).sign(CA_KEY, hashes.SHA384()).public_bytes(Encoding.DER)
    return {f.code for f in findings(der) if f.severity in ("ERROR", "FATAL", "WARNING")}


CASES = [  # (name, key, serial, not_before, not_after): clean ones and ones RFC 5280 refuses
    ("vpn.example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), (1 << 158) + 12345, START,
     START + timedelta(hours=24)),
    ("vpn.example.com", ec.generate_private_key(ec.SECP384R1()).public_key(), (1 << 100) + 7, START,
     START + timedelta(days=9000)),  # notAfter after 2049: GeneralizedTime
    ("vpn.example.com", rsa.generate_private_key(65537, 3072).public_key(), 1 << 63, START,
     START + timedelta(hours=1)),
    ("x" * 70 + ".example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), 99, START,
     START + timedelta(hours=1)),  # a label over 63 characters
    ("bad name.example.com", ec.generate_private_key(ec.SECP256R1()).public_key(), 5, START,
     START + timedelta(seconds=1)),  # a space in a dNSName
]


@pytest.mark.parametrize("name,key,serial,not_before,not_after", CASES)
def test_the_shape_gets_the_findings_of_the_certificate(name, key, serial, not_before, not_after) -> None:  # type: ignore[no-untyped-def]
    for critical_ski in (False, True):
        build = builder_for(name, critical_ski=critical_ski)
        real = codes(build, key, serial, not_before, not_after)
        shaped = codes(build, shape_key(key), shape_serial(serial), *shape_validity(not_before, not_after))
        assert real == shaped


def test_the_findings_cases_are_not_all_clean() -> None:
    found = [codes(builder_for(n), k, s, b, a) for n, k, s, b, a in CASES]
    assert not found[0] and not found[1] and not found[2] and found[3] and found[4]
    name, key, serial, not_before, not_after = CASES[0]
    assert codes(builder_for(name, critical_ski=True), key, serial, not_before, not_after)


def test_a_renewal_with_a_new_key_reuses_the_verdict_and_a_new_name_does_not() -> None:
    build = builder_for("gw1.example.net")
    misses, hits = verdicts.misses, verdicts.hits
    for hours in (1, 5):  # another key, serial and validity: the same shape
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        lint_before_signing(build, key, (1 << 158) + hours, START + timedelta(hours=hours),
                            START + timedelta(hours=hours + 24), CA_KEY, hashes.SHA384())
    assert (verdicts.misses - misses, verdicts.hits - hits) == (1, 1)
    lint_before_signing(builder_for("gw2.example.net"), ec.generate_private_key(ec.SECP256R1()).public_key(),
                        1 << 158, START, START + timedelta(hours=24), CA_KEY, hashes.SHA384())
    assert verdicts.misses - misses == 2


def test_a_kept_refusal_still_refuses() -> None:
    build = builder_for("y" * 70 + ".example.com")
    for _ in range(2):  # linted, then from the kept verdict
        with pytest.raises(LintFailed, match="pkix"):
            lint_before_signing(build, ec.generate_private_key(ec.SECP256R1()).public_key(), 1 << 150, START,
                                START + timedelta(hours=1), CA_KEY, hashes.SHA384())
