"""The one exception hierarchy of the core; each front end maps it to its own error format."""

from hsm.errors import HsmUnavailable


class VpncaError(Exception):
    """Base class of every error the core raises on purpose."""

    counted = False  # set once a refusal has been logged and counted, so no edge counts it again


class BadRequest(VpncaError):
    """The input cannot be parsed or is inconsistent (malformed CSR, bad signature)."""


class PolicyViolation(VpncaError):
    """The request is well formed but the crypto policy or the profile refuses it."""


class NotAuthorized(VpncaError):
    """The requester may not have what it asked for."""


class NotAuthenticated(NotAuthorized):
    """No credential, or a credential that is unknown, used up or expired."""


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


class StoreUnavailable(VpncaError):
    """The database cannot be reached (stopped, restarting, locked): try again later."""


class ConfigError(VpncaError):
    """vpnca.toml or the environment is missing or wrong."""


class SchemaOutdated(VpncaError):
    """The database schema is not the revision this vpnca needs (behind, empty, or from a newer vpnca)."""

    def __init__(self, message: str, *, current: str | None = None, required: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.required = required


__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "HsmUnavailable",
    "NotAuthenticated",
    "NotAuthorized",
    "NotFound",
    "Pending",
    "PolicyViolation",
    "SchemaOutdated",
    "StoreUnavailable",
    "VpncaError",
]
