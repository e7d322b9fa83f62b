"""Every certificate is linted before the token signs it (RFC 5280 profile, pkilint).

As Boulder does: the TBS certificate is first signed with a throwaway in-memory key of the CA key's
type, the result is linted, and only a certificate without ERROR or FATAL findings is signed again,
for real, on the token. The validator is built once per process (building it costs far more than
running it), when the first certificate is linted: importing pkilint costs a third of a second that
commands which sign nothing should not pay.

Linting takes ~10 ms of pure Python per certificate, more than the rest of an issuance, so each
process keeps pkilint's verdict by *lint shape*: the leaf's spec (vpnca/leaf.py: names, profile,
extensions; a certificate is a pure function of it and the three fields below) with the fields vpnca
draws for each certificate replaced by fixed stand-ins that keep what the RFC 5280 validators look at:
any serial in RFC 5280's range by one fixed serial (a serial out of it is kept), each validity time by a
fixed instant of the same encoding class (UTCTime, GeneralizedTime) in the same order, the subject key by
a fixed key of the same algorithm, curve or modulus size and exponent (and its key identifier derived the
same way). The key's own bits were checked where the request was made (a CSR's key is parsed and
policy-checked). A miss lints that shape certificate in full; a renewal, or the same name with a new
key, finds its verdict without building anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.errors import PolicyViolation
from vpnca.leaf import LeafSpec, build_leaf

BLOCKING = frozenset({"FATAL", "ERROR"})  # pkilint's ValidationFindingSeverity names that refuse
VERDICTS_KEPT = 100_000  # lint shapes remembered per process (~200 bytes each: a key tuple, its verdict)
MAX_SERIAL = (1 << 159) - 1  # RFC 5280 4.1.2.2: 20 octets, positive
IN_RANGE_SERIAL = 1 << 158


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str | None
    path: str


class LintFailed(PolicyViolation):
    """The certificate the request would produce breaks RFC 5280: nothing is signed."""

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("the certificate would not conform to RFC 5280: "
                         + ", ".join(sorted({f.code for f in findings})))
        self.findings = findings


@cache
def _linter() -> tuple[Any, Any]:
    """(document loader, validator), built once."""
    from pkilint import loader
    from pkilint.pkix import certificate, extension, name

    return loader.RFC5280CertificateDocumentLoader(), certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


_lock = threading.Lock()  # the validator container keeps per-run state


def findings(der: bytes) -> list[Finding]:
    """Every finding pkilint's RFC 5280 linter raises for a DER certificate."""
    loader, validator = _linter()
    document = loader.load_der_document(der, "certificate")
    with _lock:
        results = validator.validate(document.root)
    return [Finding(d.finding.severity.name, d.finding.code, d.message, str(r.node.path))
            for r in results for d in r.finding_descriptions]


@cache
def _throwaway_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


# --- the lint shape -------------------------------------------------------------------------------

_TIME_CLASSES = (  # RFC 5280 4.1.2.5: UTCTime for 1950-2049, GeneralizedTime otherwise
    (datetime(1950, 1, 1, tzinfo=UTC), datetime(1940, 1, 1, tzinfo=UTC)),
    (datetime(2050, 1, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC)),
    (datetime.max.replace(tzinfo=UTC), datetime(2060, 1, 1, tzinfo=UTC)),
)


def _time_class(moment: datetime) -> datetime:
    return next(base for bound, base in _TIME_CLASSES if moment < bound)


def shape_validity(not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
    """Fixed stand-ins in the same encoding classes and the same order (before, equal, after)."""
    start, end = _time_class(not_before), _time_class(not_after)
    if start == end:
        order = (not_after > not_before) - (not_after < not_before)
        end = start + timedelta(days=order)
    return start, end


def shape_serial(serial: int) -> int:
    """One fixed serial for every serial in RFC 5280's range (positive, at most 20 octets); others kept."""
    return IN_RANGE_SERIAL if 0 < serial <= MAX_SERIAL else serial


@cache
def _stand_in_ec(curve: type[ec.EllipticCurve]) -> ec.EllipticCurvePublicKey:
    return ec.derive_private_key(1, curve()).public_key()  # the generator point: on every named curve


@cache
def _stand_in_rsa(bits: int, exponent: int) -> rsa.RSAPublicKey:
    # an odd modulus of the same length; pkilint decodes it and derives the key identifier, nothing more
    return rsa.RSAPublicNumbers(exponent, (1 << (bits - 1)) | 0xFFFF_FFFF_FFFF_FFFF).public_key()


def shape_key(key: CertificatePublicKeyTypes) -> tuple[tuple[object, ...], CertificatePublicKeyTypes] | None:
    """(what the stand-in keeps of the key, a fixed key of the same algorithm and parameters), or None
    for a key type without a stand-in."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ec", key.curve.name), _stand_in_ec(type(key.curve))
    if isinstance(key, rsa.RSAPublicKey):
        exponent = key.public_numbers().e
        return ("rsa", key.key_size, exponent), _stand_in_rsa(key.key_size, exponent)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("ed25519",), ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    if isinstance(key, ed448.Ed448PublicKey):
        return ("ed448",), ed448.Ed448PrivateKey.from_private_bytes(bytes(57)).public_key()
    return None


class _Verdicts:
    """A bounded, thread-safe map from a lint shape to its findings (least recently used out)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[Finding, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, shape: Hashable) -> tuple[Finding, ...] | None:
        with self._lock:
            found = self._entries.get(shape)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(shape)
            return found

    def put(self, shape: Hashable, verdict: tuple[Finding, ...]) -> None:
        with self._lock:
            self._entries[shape] = verdict
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)


verdicts = _Verdicts(VERDICTS_KEPT)


def lint_before_signing(spec: LeafSpec, public_key: CertificatePublicKeyTypes, serial: int,
                        not_before: datetime, not_after: datetime,
                        ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                        algorithm: hashes.SHA256 | hashes.SHA384,
                        *, accepted: frozenset[str] = frozenset()) -> None:
    """Lint the leaf `spec` and these fields make, by its lint shape (signed with an in-memory key of the
    CA key's type); LintFailed on an ERROR or FATAL finding whose code is not `accepted`."""
    # the signature algorithm in the TBS follows the hash, not the curve: a P-256 key signs fastest
    kind = "secp256r1" if isinstance(ca_key, ec.EllipticCurvePrivateKey) else "rsa"
    shape = shape_key(public_key)
    if shape is None:  # no stand-in: the real fields, linted every time
        verdict = _lint(spec, public_key, serial, not_before, not_after, kind, algorithm)
    else:
        kept, stand_in = shape
        serial, (not_before, not_after) = shape_serial(serial), shape_validity(not_before, not_after)
        key = (spec.digest, kept, serial, not_before, not_after, kind, algorithm.name)
        found = verdicts.get(key)
        if found is None:
            found = _lint(spec, stand_in, serial, not_before, not_after, kind, algorithm)
            verdicts.put(key, found)
        verdict = found
    blocking = [f for f in verdict if f.severity in BLOCKING and f.code not in accepted]
    if blocking:
        raise LintFailed(blocking)


def _lint(spec: LeafSpec, public_key: CertificatePublicKeyTypes, serial: int, not_before: datetime,
          not_after: datetime, kind: str, algorithm: hashes.SHA256 | hashes.SHA384) -> tuple[Finding, ...]:
    precertificate = build_leaf(spec, public_key, serial, not_before, not_after).sign(
        _throwaway_key(kind), algorithm)
    return tuple(findings(precertificate.public_bytes(Encoding.DER)))


__all__ = ["Finding", "LintFailed", "findings", "lint_before_signing", "shape_key", "shape_serial",
           "shape_validity", "verdicts"]
