"""The crypto policy: which keys, signature algorithms and names vpnca accepts."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from vpnca.config import PolicySettings
from vpnca.errors import BadRequest, PolicyViolation
from vpnca.identities import IkeIdentity

ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys cost every verifier and are a cheap way to load the CA
# what a CSR may ask for as critical extensions; anything else critical is refused, not ignored
KNOWN_CRITICAL_REQUEST_EXTENSIONS = frozenset({
    x509.oid.ExtensionOID.BASIC_CONSTRAINTS, x509.oid.ExtensionOID.KEY_USAGE,
    x509.oid.ExtensionOID.EXTENDED_KEY_USAGE, x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
})
ACCEPTED_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def check_public_key(key: CertificatePublicKeyTypes, *, allow_ed25519: bool = False) -> None:
    """Refuse keys the policy does not accept (RSA < 2048, DSA, other curves)."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise PolicyViolation(f"RSA key of {key.key_size} bits refused (minimum {MIN_RSA_BITS})")
        if key.key_size > MAX_RSA_BITS:
            raise PolicyViolation(f"RSA key of {key.key_size} bits refused (maximum {MAX_RSA_BITS})")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ACCEPTED_CURVES):
            raise PolicyViolation(f"EC curve {key.curve.name} refused (P-256 or P-384 only)")
        return
    if isinstance(key, ed25519.Ed25519PublicKey) and allow_ed25519:
        return
    if isinstance(key, dsa.DSAPublicKey):
        raise PolicyViolation("DSA keys are refused")
    raise PolicyViolation(f"key type {type(key).__name__} refused")


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """Check the CSR's signature algorithm against the policy, its proof of possession, and what its
    extensions ask for (no CA certificate, no critical extension vpnca does not understand)."""
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise PolicyViolation(f"CSR signature algorithm refused: {exc}") from exc
    if algorithm is None and not isinstance(csr.public_key(), ed25519.Ed25519PublicKey):
        raise PolicyViolation("CSR signature algorithm refused: no hash")
    if algorithm is not None and not isinstance(algorithm, ACCEPTED_HASHES):
        raise PolicyViolation(f"CSR signed with {algorithm.name.upper()}: SHA-256 or stronger required")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadRequest(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise BadRequest("CSR signature does not verify (no proof of possession)")
    _check_requested_extensions(csr)


def _check_requested_extensions(csr: x509.CertificateSigningRequest) -> None:
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise BadRequest(f"CSR extensions cannot be parsed: {exc}") from exc
    for extension in extensions:
        if isinstance(extension.value, x509.BasicConstraints) and extension.value.ca:
            raise PolicyViolation("the CSR asks for a CA certificate (basicConstraints CA:TRUE): "
                                  "vpnca issues end-entity certificates only")
        if extension.critical and extension.oid not in KNOWN_CRITICAL_REQUEST_EXTENSIONS:
            raise PolicyViolation("the CSR has a critical extension vpnca does not know "
                                  f"({extension.oid.dotted_string})")


def check_identities(identities: tuple[IkeIdentity, ...], policy: PolicySettings) -> None:
    """Only configured domains (and their subdomains) and IP ranges; no wildcards."""
    if not identities:
        raise BadRequest("no identity requested")
    for identity in identities:
        if identity.kind == "dn":
            if not policy.allow_dn_identities:
                raise PolicyViolation(f"DN identities are not allowed: {identity}")
            continue
        if identity.kind == "ip":
            address = ipaddress.ip_address(identity.value)
            if not any(address in network for network in policy.allowed_ip_ranges):
                raise PolicyViolation(f"IP address {address} is outside the allowed ranges")
            continue
        domain = identity.domain or ""
        if not any(domain == d or domain.endswith("." + d) for d in policy.allowed_domains):
            raise PolicyViolation(f"name {identity} is outside the allowed domains")
