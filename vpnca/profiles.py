"""Certificate profiles: what a gateway or a device certificate carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from vpnca.config import Settings
from vpnca.errors import BadRequest

ID_KP_IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")
IKE_INTERMEDIATE = ObjectIdentifier("1.3.6.1.5.5.8.2.2")

PROFILE_EKUS: dict[str, tuple[ObjectIdentifier, ...]] = {
    # clientAuth too: a gateway host renews its own certificate over EST with it (mutual TLS)
    "gateway": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_IPSEC_IKE,
                IKE_INTERMEDIATE),
    "device": (ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_IPSEC_IKE),
    "service": (ExtendedKeyUsageOID.SERVER_AUTH,),
}


@dataclass(frozen=True)
class Profile:
    """A leaf certificate profile."""

    name: str
    extended_key_usages: tuple[ObjectIdentifier, ...]
    lifetime: timedelta

    def key_usage(self, public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
        """digitalSignature, plus keyEncipherment for RSA keys."""
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )


def get_profile(settings: Settings, name: str) -> Profile:
    if name not in PROFILE_EKUS or name not in settings.profiles:
        raise BadRequest(f"unknown profile {name!r} (known: {', '.join(sorted(PROFILE_EKUS))})")
    return Profile(name, PROFILE_EKUS[name], settings.profiles[name].lifetime)
