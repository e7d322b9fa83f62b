"""Software keys kept as encrypted PKCS#8 files (the offline root, development)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hsm.errors import HsmUnavailable
from hsm.token import KeyAlgorithm

SoftwareKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_software_key(algorithm: KeyAlgorithm) -> SoftwareKey:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def save_software_key(key: SoftwareKey, path: Path, passphrase: bytes) -> None:
    """Write `key` as PKCS#8 encrypted with `passphrase`, readable by the owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


def load_software_key(path: Path, passphrase: bytes) -> SoftwareKey:
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except (OSError, ValueError, TypeError) as exc:
        raise HsmUnavailable(f"cannot load software key {path}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise HsmUnavailable(f"{path}: unsupported key type {type(key).__name__}")
    return key
