"""One PKCS#11 token: lookup by label, login, key generation and serialised signing.

python-pkcs11 initialises the module without locking callbacks, and SoftHSM then runs without
internal locks, so every call into the token goes through one lock per token. Login is per token
and per process, so a process holds exactly one logged-in session for each token it uses.
Signing scales with processes, not threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.errors import HsmUnavailable, KeyExists, KeyNotFound

KeyAlgorithm = Literal["ec-p256", "ec-p384", "rsa-3072"]

CURVE_OIDS = {"ec-p256": "1.2.840.10045.3.1.7", "ec-p384": "1.3.132.0.34"}


@dataclass(frozen=True)
class KeySpec:
    """A key to generate on the token."""

    label: str
    algorithm: KeyAlgorithm


def read_pin(pin_file: str | os.PathLike[str] | None = None) -> str:
    """The user PIN from VPNCA_PIN_FILE, the given file, or VPNCA_PIN (never from argv)."""
    path = os.environ.get("VPNCA_PIN_FILE") or pin_file
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise HsmUnavailable(f"cannot read PIN file {path}: {exc.strerror}") from exc
    pin = os.environ.get("VPNCA_PIN")
    if pin:
        return pin
    raise HsmUnavailable("no token PIN: set VPNCA_PIN_FILE or VPNCA_PIN")


class Token:
    """A logged-in session on one token; every call is serialised by `lock`."""

    def __init__(self, session: pkcs11.Session, label: str) -> None:
        self._session = session
        self.label = label
        self.lock = threading.RLock()
        self.sign_observers: list[Callable[[str, float], None]] = []  # (key label, seconds), e.g. metrics

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one token operation under the token lock, mapping PKCS#11 errors."""
        with self.lock:
            try:
                return fn(*args, **kwargs)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise HsmUnavailable(f"token {self.label}: {type(exc).__name__} {exc}") from exc

    def has_key(self, label: str) -> bool:
        with self.lock:
            found = list(
                self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
                )
            )
        return bool(found)

    def generate(self, spec: KeySpec) -> None:
        """Generate a key pair on the token: private half sensitive and never extractable."""
        if self.has_key(spec.label):
            raise KeyExists(f"a key labelled {spec.label!r} is already on token {self.label}")
        private_template = {
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SIGN: True,
        }
        if spec.algorithm.startswith("rsa"):
            private_template[Attribute.DECRYPT] = True  # the SCEP RA unwraps content keys
        key_id = spec.label.encode()
        with self.lock:
            if spec.algorithm in CURVE_OIDS:
                params = self._session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(CURVE_OIDS[spec.algorithm])},
                    local=True,
                )
                params.generate_keypair(
                    store=True, label=spec.label, id=key_id, private_template=private_template
                )
            else:
                self._session.generate_keypair(
                    KeyType.RSA,
                    3072,
                    store=True,
                    label=spec.label,
                    id=key_id,
                    private_template=private_template,
                )

    def private_key(self, label: str) -> pkcs11.PrivateKey:
        return self._get(ObjectClass.PRIVATE_KEY, label)

    def public_key(self, label: str) -> pkcs11.PublicKey:
        return self._get(ObjectClass.PUBLIC_KEY, label)

    def _get(self, object_class: ObjectClass, label: str) -> Any:
        with self.lock:
            try:
                return self._session.get_key(object_class=object_class, label=label)
            except pkcs11.exceptions.NoSuchKey as exc:
                raise KeyNotFound(f"no key labelled {label!r} on token {self.label}") from exc

    def sign(self, key: pkcs11.PrivateKey, label: str, data: bytes, mechanism: Mechanism, **kw: Any) -> bytes:
        """Sign with `key` (labelled `label`: given, as reading it is one more token call)."""
        with self.lock:
            started = time.perf_counter()
            signature = bytes(self.call(key.sign, data, mechanism=mechanism, **kw))
            elapsed = time.perf_counter() - started
        for observe in self.sign_observers:
            observe(label, elapsed)
        return signature

    def attributes(self, obj: Any, names: list[Attribute]) -> dict[Attribute, Any]:
        return dict(self.call(obj.get_attributes, names))


_tokens: dict[tuple[str, str], Token] = {}
_tokens_lock = threading.Lock()


def open_token(module: str, label: str, pin: str) -> Token:
    """The process's logged-in session on the token `label` of PKCS#11 `module` (opened once)."""
    with _tokens_lock:
        cached = _tokens.get((module, label))
        if cached is not None:
            return cached
        try:
            lib = pkcs11.lib(module)
        except Exception as exc:  # the loader raises several types for a bad module
            raise HsmUnavailable(f"cannot load PKCS#11 module {module}: {exc}") from exc
        try:
            token = lib.get_token(token_label=label)
        except (pkcs11.exceptions.NoSuchToken, pkcs11.exceptions.MultipleTokensReturned) as exc:
            if _tokens:  # re-initialising would close the sessions already open
                raise HsmUnavailable(f"no single token labelled {label!r} in {module}") from exc
            lib.reinitialize()  # SoftHSM lists tokens created after C_Initialize only on re-init
            try:
                token = lib.get_token(token_label=label)
            except pkcs11.exceptions.PKCS11Error:
                raise HsmUnavailable(f"no single token labelled {label!r} in {module}") from exc
        try:
            session = token.open(rw=True, user_pin=pin)
        except pkcs11.exceptions.PinIncorrect as exc:
            raise HsmUnavailable(f"wrong PIN for token {label!r}") from exc
        except pkcs11.exceptions.PKCS11Error as exc:
            raise HsmUnavailable(f"cannot log in to token {label!r}: {type(exc).__name__}") from exc
        opened = Token(session, label)
        _tokens[(module, label)] = opened
        return opened
