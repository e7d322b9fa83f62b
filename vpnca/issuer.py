"""The issuing CA's key and what signing with it means: loading the key from the token, the hash
for a key, the back-dating of notBefore, the revocation reasons. The authority (leaves), the CRL
builder and the `init` ceremony all sign through this module; it imports none of them."""

from __future__ import annotations

import os
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType

from hsm import Token, TokenEcPrivateKey, TokenRsaPrivateKey, open_token, read_pin
from vpnca import metrics
from vpnca.config import Settings
from vpnca.errors import NotFound, token_errors
from vpnca.store import Database

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
BACKDATE = timedelta(minutes=5)


def open_settings_token(settings: Settings) -> Token:
    """The logged-in token named by the settings (a development SoftHSM config is honoured)."""
    if settings.token.softhsm_conf and "SOFTHSM2_CONF" not in os.environ:
        os.environ["SOFTHSM2_CONF"] = str(settings.token.softhsm_conf)
    pin = read_pin(settings.token.pin_file)
    with token_errors():
        token = open_token(settings.token.module, settings.token.label, pin)
    if metrics.token_signed not in token.sign_observers:
        token.sign_observers.append(metrics.token_signed)
    return token


def token_key(token: Token, label: str) -> CaKey:
    """A token key as a cryptography private key, EC or RSA as the token says."""
    with token_errors():
        key_type = token.attributes(token.private_key(label), [Attribute.KEY_TYPE])[Attribute.KEY_TYPE]
    if key_type == KeyType.EC:
        return TokenEcPrivateKey(token, label)
    return TokenRsaPrivateKey(token, label)


def hash_for(key: CaKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 keys, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def load_ca_certificate(store: Database, role: str) -> tuple[x509.Certificate, str | None]:
    record = store.current_ca(role)
    if record is None:
        raise NotFound(f"no {role} CA certificate: run `vpnca init` first")
    return x509.load_der_x509_certificate(record.der), record.key_label


REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
