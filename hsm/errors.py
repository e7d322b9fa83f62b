"""Errors raised by the token layer."""


class HsmError(Exception):
    """Base class of token errors."""


class HsmUnavailable(HsmError):
    """The PKCS#11 module, the token or the PIN cannot be used."""


class KeyNotFound(HsmError):
    """No key with the requested label is on the token."""


class KeyExists(HsmError):
    """A key with the requested label is already on the token."""
