"""One PKCS#11 token: lookup by label, login, key generation, serialised signing, and recovery.

python-pkcs11 initialises the module without locking callbacks, and SoftHSM then runs without
internal locks, so every call into any token of the process goes through one lock. Login is per
token and per process, so a process holds exactly one logged-in session for each token it uses.
Signing scales with processes, not threads.

A token can go away and come back (an HSM rebooted, a network HSM cut off, a SoftHSM token directory
moved). A call that fails with a session, handle or device error marks the session broken and raises
`HsmUnavailable` (the caller answers 503 or tryLater); the next call reopens it: the module is
finalised and initialised again (SoftHSM sees a token that came back only then; this closes every
session of the process, so every `Token` of the module reopens its own), the user logs in again and
key handles are looked up by label again. While reopening fails it is retried at most once a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    DeviceError,
    DeviceMemory,
    DeviceRemoved,
    GeneralError,
    KeyHandleInvalid,
    MultipleTokensReturned,
    NoSuchKey,
    NoSuchToken,
    ObjectHandleInvalid,
    PinIncorrect,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    UserNotLoggedIn,
)
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.errors import HsmError, HsmUnavailable, KeyExists, KeyNotFound

log = logging.getLogger("vpnca.hsm")
KeyAlgorithm = Literal["ec-p256", "ec-p384", "rsa-3072"]
T = TypeVar("T")

CURVE_OIDS = {"ec-p256": "1.2.840.10045.3.1.7", "ec-p384": "1.3.132.0.34"}
RETRY_SECONDS = 1.0  # while the token stays away, one reopening attempt a second per token at most
# the session (or the whole module) has to be reopened after these
SESSION_LOST: tuple[type[PKCS11Error], ...] = (
    SessionHandleInvalid, SessionClosed, TokenNotPresent, TokenNotRecognised, DeviceRemoved, DeviceError,
    DeviceMemory, GeneralError, UserNotLoggedIn,
)
# a handle that no longer names an object: the token went away, or the key was destroyed
HANDLE_LOST: tuple[type[PKCS11Error], ...] = (ObjectHandleInvalid, KeyHandleInvalid)

# every token call of the process, whatever the token or module (SoftHSM runs without locks)
_LOCK = threading.RLock()


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


def _not_initialised(exc: PKCS11Error) -> bool:
    """CKR_CRYPTOKI_NOT_INITIALIZED, which python-pkcs11 raises as a bare PKCS11Error."""
    return type(exc) is PKCS11Error and "not initialized" in str(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__} {text}" if text else type(exc).__name__


class Module:
    """One loaded PKCS#11 library, shared by every `Token` of the process that uses it.

    `generation` counts re-initialisations: a session opened in an older generation is gone.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.lib = pkcs11.lib(path)
        except Exception as exc:  # the loader raises several types for a bad module
            raise HsmUnavailable(f"cannot load PKCS#11 module {path}: {exc}") from exc
        self.generation = 0

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize: closes every session of the process on this module."""
        self.generation += 1
        try:
            self.lib.reinitialize()
        except PKCS11Error:
            self.lib.initialize()  # finalize failed but left the library uninitialised

    def find(self, label: str) -> pkcs11.Token:
        return self.lib.get_token(token_label=label)


class Token:
    """A logged-in session on one token that reopens itself; every call is serialised by `lock`."""

    def __init__(self, module: Module, label: str, pin: str) -> None:
        self.module = module
        self.label = label
        self._pin = pin
        self.lock = _LOCK
        self.sign_observers: list[Callable[[str, float], None]] = []  # (key label, seconds), e.g. metrics
        self._session: pkcs11.Session | None = None
        self._generation = -1
        self._handles: dict[tuple[ObjectClass, str], Any] = {}
        self._broken: str | None = None  # why the session was lost (None while it works)
        self._retry_at = 0.0  # monotonic time of the next reopening attempt
        self._open()

    # -- session life ---------------------------------------------------------------------------

    def _open(self) -> None:
        """Log in to the token in a new session (under the lock)."""
        try:
            token = self.module.find(self.label)
        except (NoSuchToken, MultipleTokensReturned) as exc:
            raise HsmUnavailable(f"no single token labelled {self.label!r} in {self.module.path}") from exc
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except PinIncorrect as exc:
            raise HsmUnavailable(f"wrong PIN for token {self.label!r}") from exc
        except PKCS11Error as exc:
            raise HsmUnavailable(f"cannot log in to token {self.label!r}: {type(exc).__name__}") from exc
        self._session = session
        self._generation = self.module.generation
        self._handles.clear()

    def _live_session(self) -> pkcs11.Session:
        """The working session, reopened first if it was lost (under the lock)."""
        if self._session is not None and self._generation == self.module.generation:
            return self._session
        now = time.monotonic()
        if now < self._retry_at:
            raise HsmUnavailable(f"token {self.label} is unavailable ({self._broken or 'reopening'})")
        self._session = None
        self._handles.clear()
        try:
            if self._broken is not None and self._generation == self.module.generation:
                self.module.reinitialize()  # nobody has since: the token may be back only after it
            self._open()
        except (HsmUnavailable, PKCS11Error) as exc:
            self._generation = self.module.generation  # so the next attempt re-initialises again
            self._broken = self._broken or _describe(exc)
            self._retry_at = now + RETRY_SECONDS
            log.debug("token %s: reopening failed: %s", self.label, _describe(exc))
            raise HsmUnavailable(f"token {self.label} is unavailable ({self._broken})") from exc
        if self._broken is not None:
            log.warning("token %s is back: session reopened and logged in", self.label)
        self._broken = None
        self._retry_at = 0.0
        assert self._session is not None
        return self._session

    def _present(self) -> bool:
        """Whether the token still answers on its slot (C_GetTokenInfo), under the lock."""
        if self._session is None:
            return False
        try:
            self._session.token.slot.get_token()
        except PKCS11Error:
            return False
        return True

    def _lost(self, exc: PKCS11Error) -> HsmError:
        """The error to raise for a failed call; a lost session is marked for reopening."""
        if isinstance(exc, GeneralError) and self._present():
            # SoftHSM also answers bad input (a forged PKCS#1 block to unwrap) with CKR_GENERAL_ERROR:
            # while the token still answers, that is the operation's failure, not a lost session, so an
            # unauthenticated client cannot make every worker log in again
            return HsmError(f"token {self.label} refused the operation: {_describe(exc)}")
        if isinstance(exc, HANDLE_LOST) and self._present():
            self._handles.clear()  # a key destroyed or replaced: look it up again by label next time
            return HsmUnavailable(f"token {self.label}: {_describe(exc)}")
        if isinstance(exc, SESSION_LOST + HANDLE_LOST) or _not_initialised(exc):
            self._mark_broken(_describe(exc))
            return HsmUnavailable(f"token {self.label} is unavailable ({_describe(exc)}); reopening")
        return HsmUnavailable(f"token {self.label}: {_describe(exc)}")

    def _mark_broken(self, why: str) -> None:
        if self._broken is None:
            log.warning("token %s is unavailable (%s): its session will be reopened", self.label, why)
        self._broken = why
        self._session = None
        self._handles.clear()
        self._retry_at = 0.0  # the next call tries at once; then once a second

    def _run(self, operation: Callable[[pkcs11.Session], T]) -> T:
        """Run one operation on the live session under the lock, mapping PKCS#11 errors."""
        with self.lock:
            session = self._live_session()
            try:
                return operation(session)
            except PKCS11Error as exc:
                raise self._lost(exc) from exc

    # -- keys ----------------------------------------------------------------------------------

    def _handle(self, session: pkcs11.Session, object_class: ObjectClass, label: str) -> Any:
        """The key object labelled `label`, looked up once per session (under the lock)."""
        found = self._handles.get((object_class, label))
        if found is None:
            try:
                found = session.get_key(object_class=object_class, label=label)
            except NoSuchKey as exc:
                if not self._present():  # SoftHSM finds nothing once its token directory is gone
                    self._mark_broken("token not present")
                    raise HsmUnavailable(f"token {self.label} is unavailable (token not present)") from exc
                raise KeyNotFound(f"no key labelled {label!r} on token {self.label}") from exc
            self._handles[(object_class, label)] = found
        return found

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one token operation under the token lock, mapping PKCS#11 errors."""
        return self._run(lambda _: fn(*args, **kwargs))

    def has_key(self, label: str) -> bool:
        return self._run(lambda session: bool(list(session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}))))

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

        def generate(session: pkcs11.Session) -> None:
            if spec.algorithm in CURVE_OIDS:
                params = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(CURVE_OIDS[spec.algorithm])},
                    local=True,
                )
                params.generate_keypair(store=True, label=spec.label, id=key_id,
                                        private_template=private_template)
            else:
                session.generate_keypair(KeyType.RSA, 3072, store=True, label=spec.label, id=key_id,
                                         private_template=private_template)

        self._run(generate)

    def private_key(self, label: str) -> pkcs11.PrivateKey:
        """The private key object (valid until the session is reopened: prefer the label methods)."""
        key: pkcs11.PrivateKey = self._run(
            lambda session: self._handle(session, ObjectClass.PRIVATE_KEY, label))
        return key

    def public_key(self, label: str) -> pkcs11.PublicKey:
        key: pkcs11.PublicKey = self._run(
            lambda session: self._handle(session, ObjectClass.PUBLIC_KEY, label))
        return key

    def key_attributes(self, object_class: ObjectClass, label: str,
                       names: list[Attribute]) -> dict[Attribute, Any]:
        """Attributes of the key labelled `label`, read with a fresh handle if the session was reopened."""
        return self._run(
            lambda session: dict(self._handle(session, object_class, label).get_attributes(names)))

    def sign(self, label: str, data: bytes, mechanism: Mechanism, **kw: Any) -> bytes:
        """Sign `data` with the private key labelled `label`."""
        with self.lock:
            started = time.perf_counter()
            signature = self._run(lambda session: bytes(
                self._handle(session, ObjectClass.PRIVATE_KEY, label).sign(data, mechanism=mechanism, **kw)))
            elapsed = time.perf_counter() - started
        for observe in self.sign_observers:
            observe(label, elapsed)
        return signature

    def decrypt(self, label: str, data: bytes, mechanism: Mechanism) -> bytes:
        """Decrypt `data` with the private key labelled `label` (RSA key transport)."""
        return self._run(lambda session: bytes(
            self._handle(session, ObjectClass.PRIVATE_KEY, label).decrypt(data, mechanism=mechanism)))

    def attributes(self, obj: Any, names: list[Attribute]) -> dict[Attribute, Any]:
        return dict(self.call(obj.get_attributes, names))


_modules: dict[str, Module] = {}
_tokens: dict[tuple[str, str], Token] = {}  # one registry: a re-initialisation reopens every one of them


def open_token(module: str, label: str, pin: str) -> Token:
    """The process's logged-in session on the token `label` of PKCS#11 `module` (opened once)."""
    with _LOCK:
        cached = _tokens.get((module, label))
        if cached is not None:
            return cached
        loaded = _modules.get(module)
        if loaded is None:
            loaded = _modules[module] = Module(module)
        try:
            loaded.find(label)
        except (NoSuchToken, MultipleTokensReturned):
            # SoftHSM lists tokens created after C_Initialize only on re-init; the sessions this closes
            # are reopened by their Tokens on their next call
            loaded.reinitialize()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"token {label!r} in {module}: {_describe(exc)}") from exc
        opened = Token(loaded, label, pin)
        _tokens[(module, label)] = opened
        return opened
