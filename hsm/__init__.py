"""PKCS#11 token access: token keys presented as cryptography private keys, plus software keys.

The names below are loaded on first use (PEP 562): `hsm.errors` or `hsm.softhsm` alone does not load
python-pkcs11 and cryptography's key types, which the operator's read-only commands never need."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsm.errors import HsmError, HsmUnavailable, KeyNotFound
    from hsm.keys import TokenEcPrivateKey, TokenRsaPrivateKey
    from hsm.software import generate_software_key, load_software_key, save_software_key
    from hsm.token import KeySpec, Token, open_token, read_pin

_MODULE_OF = {
    "HsmError": "hsm.errors", "HsmUnavailable": "hsm.errors", "KeyNotFound": "hsm.errors",
    "TokenEcPrivateKey": "hsm.keys", "TokenRsaPrivateKey": "hsm.keys",
    "generate_software_key": "hsm.software", "load_software_key": "hsm.software",
    "save_software_key": "hsm.software",
    "KeySpec": "hsm.token", "Token": "hsm.token", "open_token": "hsm.token", "read_pin": "hsm.token",
}

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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hsm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value
