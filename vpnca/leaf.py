"""A leaf certificate as a pure function of what it is made of: its spec (names, profile, extensions)
and the three fields drawn for each certificate (key, serial, validity). The linter keeps verdicts by
spec, which is sound only because nothing else goes into the certificate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from vpnca.profiles import Profile


@dataclass(frozen=True)
class LeafSpec:
    """Everything in a leaf but its key, serial and validity (its digest keys the lint verdict)."""

    subject: x509.Name
    issuer: x509.Name
    profile: Profile
    sans: tuple[x509.GeneralName, ...]
    extensions: tuple[x509.ExtensionType, ...]  # non-critical: the issuer's (AKI, AIA) and CRL pointers

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 over the DER of every name and extension and the profile's repr (which shows every
        field): equal digests, equal specs."""
        parts = [self.subject.public_bytes(), self.issuer.public_bytes(), repr(self.profile).encode()]
        if self.sans:
            parts.append(x509.SubjectAlternativeName(list(self.sans)).public_bytes())
        parts += [extension.oid.dotted_string.encode() + b"=" + extension.public_bytes()
                  for extension in self.extensions]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(len(part).to_bytes(4, "big") + part)
        return digest.digest()


def build_leaf(spec: LeafSpec, public_key: CertificatePublicKeyTypes, serial: int, not_before: datetime,
               not_after: datetime) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(spec.issuer)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(spec.profile.key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(spec.profile.extended_key_usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    for extension in spec.extensions:
        builder = builder.add_extension(extension, critical=False)
    if spec.sans:  # RFC 5280 4.2.1.6: critical when the subject is empty (a name too long for a CN)
        builder = builder.add_extension(x509.SubjectAlternativeName(list(spec.sans)),
                                        critical=not spec.subject.rdns)
    return builder


__all__ = ["LeafSpec", "build_leaf"]
