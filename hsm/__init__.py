"""PKCS#11 token access: token keys presented as cryptography private keys, plus software keys."""

from hsm.errors import HsmError, HsmUnavailable, KeyNotFound
from hsm.keys import TokenEcPrivateKey, TokenRsaPrivateKey
from hsm.software import generate_software_key, load_software_key, save_software_key
from hsm.token import KeySpec, Token, open_token, read_pin

__all__ = [
    "HsmError",
    "HsmUnavailable",
    "KeyNotFound",
    "KeySpec",
    "Token",
    "TokenEcPrivateKey",
    "TokenRsaPrivateKey",
    "generate_software_key",
    "load_software_key",
    "open_token",
    "read_pin",
    "save_software_key",
]
