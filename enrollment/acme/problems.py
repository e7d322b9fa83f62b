"""RFC 8555 section 6.7 problem documents: the only way ACME errors leave the server.

`problem_for` is the one map of errors to problems: core errors (vpnca.errors) by type, and by what
the failed request was about where RFC 8555 gives that its own type (a refused CSR is badCSR, a
refused identifier rejectedIdentifier, a second revocation alreadyRevoked). The detail of a core
error is its message (written for users); any other exception gets a fixed text, never its own.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from hsm import HsmError
from vpnca.errors import (
    BadRequest,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    PolicyViolation,
    StoreUnavailable,
    VpncaError,
)

ERROR_NS = "urn:ietf:params:acme:error:"
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 30  # when the token or the database is away

Subject = Literal["request", "identifier", "csr", "revocation"]


class AcmeProblem(Exception):
    """An ACME error: its RFC 8555 type (without the namespace), HTTP status and detail."""

    def __init__(self, type_: str, detail: str, status: int = 400, **extra: Any) -> None:
        super().__init__(f"{type_}: {detail}")
        self.type = type_
        self.detail = detail
        self.status = status
        self.extra = extra
        self.headers: dict[str, str] = {}

    def document(self) -> dict[str, Any]:
        return {"type": ERROR_NS + self.type, "detail": self.detail, "status": self.status, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.document())


# Core errors -> (problem type, HTTP status). The first match wins: subclasses before their bases.
PROBLEM_TYPES: tuple[tuple[type[VpncaError], str, int], ...] = (
    (NotFound, "malformed", 404),
    (NotAuthenticated, "unauthorized", 403),
    (NotAuthorized, "unauthorized", 403),
    (PolicyViolation, "rejectedIdentifier", 400),
    (BadRequest, "malformed", 400),
    (Conflict, "malformed", 409),
)
# ... and where what the request was about decides the type (RFC 8555 6.7, 7.4, 7.6)
PROBLEM_TYPES_BY_SUBJECT: dict[Subject, tuple[tuple[type[VpncaError], str, int], ...]] = {
    "identifier": ((PolicyViolation, "rejectedIdentifier", 400), (BadRequest, "rejectedIdentifier", 400)),
    "csr": ((PolicyViolation, "badCSR", 400), (BadRequest, "badCSR", 400),
            (NotAuthorized, "rejectedIdentifier", 400)),
    "revocation": ((Conflict, "alreadyRevoked", 400),),
}
# what the CA's own troubles say: the problem type, status and a fixed detail (never the exception's)
UNAVAILABLE: tuple[tuple[type[Exception], str], ...] = (
    (HsmError, "the CA cannot sign now; try again later"),
    (StoreUnavailable, "the CA's database is unavailable; try again later"),
)


def problem_for(exc: BaseException, subject: Subject = "request") -> AcmeProblem:
    """The problem document for any exception (an AcmeProblem is its own)."""
    if isinstance(exc, AcmeProblem):
        return exc
    for unavailable, detail in UNAVAILABLE:
        if isinstance(exc, unavailable):
            problem = AcmeProblem("serverInternal", detail, 503)
            problem.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return problem
    if isinstance(exc, VpncaError):
        for error_type, type_, status in (*PROBLEM_TYPES_BY_SUBJECT.get(subject, ()), *PROBLEM_TYPES):
            if isinstance(exc, error_type):
                return AcmeProblem(type_, str(exc), status)
        return AcmeProblem("serverInternal", "the CA cannot handle this request now", 500)
    return AcmeProblem("serverInternal", "internal error", 500)


def is_expected(exc: BaseException) -> bool:
    """False for a bug (its traceback belongs in the log); True for anything problem_for knows."""
    return isinstance(exc, (AcmeProblem, VpncaError)) or any(isinstance(exc, t) for t, _ in UNAVAILABLE)


def malformed(detail: str, status: int = 400) -> AcmeProblem:
    return AcmeProblem("malformed", detail, status)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail, 403)


def not_found(what: str) -> AcmeProblem:
    return AcmeProblem("malformed", f"no such {what}", 404)


def bad_nonce(detail: str) -> AcmeProblem:
    return AcmeProblem("badNonce", detail)


__all__ = ["ERROR_NS", "PROBLEM_JSON", "PROBLEM_TYPES", "AcmeProblem", "bad_nonce", "is_expected",
           "malformed", "not_found", "problem_for", "unauthorized"]
