"""Certificate profiles as data: `[profiles.<name>]` of vpnca.toml (built-in: device, gateway, service)
read into what the authority, the protocols and the CLI ask of a profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ObjectIdentifier

from vpnca.config import EXTENDED_KEY_USAGES, KeyType, ProfileSettings, Settings
from vpnca.errors import BadRequest, NotAuthorized, PolicyViolation

ID_KP_IPSEC_IKE = ObjectIdentifier(EXTENDED_KEY_USAGES["ipsecIKE"])
IKE_INTERMEDIATE = ObjectIdentifier(EXTENDED_KEY_USAGES["ikeIntermediate"])
ENROLLMENT_PROTOCOLS = ("est", "scep", "acme")  # the ways in a profile must allow; the CLI always may
_KEY_USAGE_ARGUMENTS = {  # RFC 5280 names: cryptography's x509.KeyUsage arguments
    "digitalSignature": "digital_signature", "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment", "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement", "keyCertSign": "key_cert_sign", "cRLSign": "crl_sign",
}
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}


def key_type(public_key: CertificatePublicKeyTypes) -> str:
    """The profile vocabulary's name of a public key: ec-p256, ec-p384, rsa, ed25519 (or its class)."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CURVES.get(public_key.curve.name, public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(public_key).__name__


@dataclass(frozen=True)
class Profile:
    """A leaf certificate profile."""

    name: str
    extended_key_usages: tuple[ObjectIdentifier, ...]
    key_usages: frozenset[str]
    lifetime: timedelta
    key_types: tuple[KeyType, ...]  # the first is the one EST csrattrs asks for and serverkeygen makes
    approval: bool
    protocols: frozenset[str]
    server_names_only: bool  # only server.tls_names (vpnca's own HTTPS certificate), not the name policy
    lint_accepted: frozenset[str]

    @classmethod
    def from_settings(cls, name: str, settings: ProfileSettings) -> Profile:
        return cls(
            name=name,
            extended_key_usages=tuple(ObjectIdentifier(EXTENDED_KEY_USAGES.get(e, e)) for e in settings.ekus),
            key_usages=frozenset(settings.key_usages), lifetime=settings.lifetime,
            key_types=settings.key_types, approval=settings.approval, protocols=frozenset(settings.protocols),
            server_names_only=settings.identities == "server_tls_names",
            lint_accepted=frozenset(settings.lint_accepted),
        )

    @property
    def preferred_key_type(self) -> KeyType:
        return self.key_types[0]

    @property
    def allows_ed25519(self) -> bool:
        return "ed25519" in self.key_types

    def check_key_type(self, public_key: CertificatePublicKeyTypes) -> None:
        """PolicyViolation unless the profile accepts this kind of key."""
        kind = key_type(public_key)
        if kind not in self.key_types:
            raise PolicyViolation(f"profile {self.name} accepts {', '.join(self.key_types)} keys, not {kind}")

    def check_protocol(self, protocol: str) -> None:
        """NotAuthorized if an enrollment protocol the profile does not allow asks for it."""
        if protocol in ENROLLMENT_PROTOCOLS and protocol not in self.protocols:
            raise NotAuthorized(f"profile {self.name} is not issued over {protocol.upper()}")

    def key_usage(self, public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
        """The configured key usages, plus keyEncipherment for RSA keys."""
        wanted = set(self.key_usages)
        if isinstance(public_key, rsa.RSAPublicKey):
            wanted.add("keyEncipherment")
        flags = {argument: name in wanted for name, argument in _KEY_USAGE_ARGUMENTS.items()}
        return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def get_profile(settings: Settings, name: str) -> Profile:
    if name not in settings.profiles:
        raise BadRequest(f"unknown profile {name!r} (known: {', '.join(sorted(settings.profiles))})")
    return Profile.from_settings(name, settings.profiles[name])


def profiles_for(settings: Settings, protocol: str) -> tuple[str, ...]:
    """The names of the profiles an enrollment protocol may issue."""
    return tuple(name for name, profile in settings.profiles.items() if protocol in profile.protocols)


__all__ = [
    "ENROLLMENT_PROTOCOLS",
    "ID_KP_IPSEC_IKE",
    "IKE_INTERMEDIATE",
    "Profile",
    "get_profile",
    "key_type",
    "profiles_for",
]
