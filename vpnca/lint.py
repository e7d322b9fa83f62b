"""Every certificate is linted before the token signs it (RFC 5280 profile, pkilint).

As Boulder does: the TBS certificate is first signed with a throwaway in-memory key of the CA key's
type, the result is linted, and only a certificate without ERROR or FATAL findings is signed again,
for real, on the token. The validator is built once per process (building it costs far more than
running it), when the first certificate is linted: importing pkilint costs a third of a second that
commands which sign nothing should not pay.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.errors import PolicyViolation

BLOCKING = frozenset({"FATAL", "ERROR"})  # pkilint's ValidationFindingSeverity names that refuse


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


def lint_before_signing(builder: x509.CertificateBuilder,
                        ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                        algorithm: hashes.SHA256 | hashes.SHA384,
                        *, accepted: frozenset[str] = frozenset()) -> None:
    """Sign `builder` with an in-memory key of the CA key's type and lint it; LintFailed on an ERROR
    or FATAL finding whose code is not `accepted`."""
    # the signature algorithm in the TBS follows the hash, not the curve: a P-256 key signs fastest
    kind = "secp256r1" if isinstance(ca_key, ec.EllipticCurvePrivateKey) else "rsa"
    precertificate = builder.sign(_throwaway_key(kind), algorithm)
    blocking = [f for f in findings(precertificate.public_bytes(Encoding.DER))
                if f.severity in BLOCKING and f.code not in accepted]
    if blocking:
        raise LintFailed(blocking)


__all__ = ["Finding", "LintFailed", "findings", "lint_before_signing"]
