"""The one exception hierarchy of the core; each front end maps it to its own error format once.

Token errors (`hsm.HsmError`) are wrapped at the core boundary as `SigningUnavailable`, so nothing
outside the token layer catches a second root. Each class has a fixed public message: what a client
is told, with the correlation id of the log line that holds the detail (`public_message`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from hsm.errors import HsmError


class VpncaError(Exception):
    """Base class of every error the core raises on purpose."""

    counted = False  # set once a refusal has been logged and counted, so no edge counts it again
    error_id: str | None = None  # the correlation id of the log line, once logged


class BadRequest(VpncaError):
    """The input cannot be parsed or is inconsistent (malformed CSR, bad signature)."""


class PolicyViolation(VpncaError):
    """The request is well formed but the crypto policy or the profile refuses it."""


class NotAuthorized(VpncaError):
    """The requester may not have what it asked for."""


class NotAuthenticated(NotAuthorized):
    """No credential, or a credential that is unknown, used up or expired."""


class ApprovalRequired(NotAuthorized):
    """The profile needs an operator's approval, and the protocol cannot wait for it."""


class Pending(VpncaError):
    """The request waits for an operator's approval; ask again later."""

    def __init__(self, request_id: str, retry_after: int) -> None:
        super().__init__(f"request {request_id} is waiting for approval")
        self.request_id = request_id
        self.retry_after = retry_after


class NotFound(VpncaError):
    """No such certificate, token or record."""


class Conflict(VpncaError):
    """The request conflicts with the current state (already revoked, CA already exists)."""


class Unavailable(VpncaError):
    """A dependency of the CA is away: try again later."""


class StoreUnavailable(Unavailable):
    """The database cannot be reached (stopped, restarting, locked): try again later."""


class SigningUnavailable(Unavailable):
    """The token cannot sign now (module, token or PIN unusable): try again later."""


class ConfigError(VpncaError):
    """vpnca.toml or the environment is missing or wrong."""


class SchemaOutdated(VpncaError):
    """The database schema is not the revision this vpnca needs (behind, empty, or from a newer vpnca)."""

    def __init__(self, message: str, *, current: str | None = None, required: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.required = required


# The taxonomy: (class, refusal reason as counted and logged, the fixed text a client gets). The first
# match wins, so subclasses come before their bases.
TAXONOMY: tuple[tuple[type[VpncaError], str, str], ...] = (
    (NotAuthenticated, "authentication", "authentication failed"),
    (ApprovalRequired, "not_authorized", "the profile needs an operator's approval (an ACME EAB)"),
    (NotAuthorized, "not_authorized", "not authorized for this request"),
    (PolicyViolation, "policy", "the request violates the CA's policy"),
    (BadRequest, "bad_request", "malformed request"),
    (NotFound, "not_found", "not found"),
    (Conflict, "conflict", "the request conflicts with the current state"),
    (Pending, "pending", "the request waits for an operator's approval"),
    (SigningUnavailable, "unavailable", "signing is unavailable; try again later"),
    (StoreUnavailable, "unavailable", "the CA is unavailable; try again later"),
    (VpncaError, "error", "the CA cannot handle this request now"),
)
INTERNAL_ERROR = "internal error"


def reason_of(exc: BaseException) -> str:
    """The refusal reason of an error (`error` for anything outside the taxonomy)."""
    return next((reason for kind, reason, _ in TAXONOMY if isinstance(exc, kind)), "error")


def public_message(exc: BaseException, error_id: str | None = None) -> str:
    """What a client is told: a fixed text per error class, never the exception's own, and the id."""
    text = next((message for kind, _, message in TAXONOMY if isinstance(exc, kind)), INTERNAL_ERROR)
    return f"{text} (id {error_id})" if error_id else text


def new_error_id() -> str:
    """A correlation id: in the response and in the log line that holds the detail."""
    return secrets.token_hex(8)


@contextmanager
def token_errors() -> Iterator[None]:
    """Token errors become SigningUnavailable here, at the core boundary."""
    try:
        yield
    except HsmError as exc:
        raise SigningUnavailable(f"the token cannot sign: {type(exc).__name__}: {exc}") from exc


__all__ = [
    "INTERNAL_ERROR",
    "TAXONOMY",
    "ApprovalRequired",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "NotAuthenticated",
    "NotAuthorized",
    "NotFound",
    "Pending",
    "PolicyViolation",
    "SchemaOutdated",
    "SigningUnavailable",
    "StoreUnavailable",
    "Unavailable",
    "VpncaError",
    "new_error_id",
    "public_message",
    "reason_of",
    "token_errors",
]
