"""RFC 8555 section 6.7 problem documents: the only way ACME errors leave the server.

`problem_for` is the one map of errors to problems: core errors (vpnca.errors) by type, and by what
the failed request was about where RFC 8555 gives that its own type (a refused CSR is badCSR, a
refused identifier rejectedIdentifier, a second revocation alreadyRevoked). The detail of a core
error is the fixed text of its class (vpnca.errors.public_message), never the exception's own: that
goes to the log line whose correlation id the response carries (routes.py).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from vpnca.errors import (
    INTERNAL_ERROR,
    ApprovalRequired,
    BadRequest,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    PolicyViolation,
    Unavailable,
    VpncaError,
    public_message,
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
        self.cause: BaseException | None = None  # the core error or bug it stands for, to log and count

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
    "identifier": ((PolicyViolation, "rejectedIdentifier", 400), (BadRequest, "rejectedIdentifier", 400),
                   (NotAuthorized, "rejectedIdentifier", 400)),
    "csr": ((PolicyViolation, "badCSR", 400), (BadRequest, "badCSR", 400),
            (ApprovalRequired, "unauthorized", 403), (NotAuthorized, "rejectedIdentifier", 400)),
    "revocation": ((Conflict, "alreadyRevoked", 400),),
}


def problem_for(exc: BaseException, subject: Subject = "request") -> AcmeProblem:
    """The problem document for any exception (an AcmeProblem is its own); `cause` keeps the error."""
    if isinstance(exc, AcmeProblem):
        return exc
    if isinstance(exc, Unavailable):  # the token or the database: try again later
        problem = AcmeProblem("serverInternal", public_message(exc), 503)
        problem.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    elif isinstance(exc, VpncaError):
        type_, status = next(((t, s) for kind, t, s in (*PROBLEM_TYPES_BY_SUBJECT.get(subject, ()),
                                                          *PROBLEM_TYPES) if isinstance(exc, kind)),
                             ("serverInternal", 500))
        problem = AcmeProblem(type_, public_message(exc), status)
    else:
        problem = AcmeProblem("serverInternal", INTERNAL_ERROR, 500)
    problem.cause = exc
    return problem


def is_expected(exc: BaseException) -> bool:
    """False for a bug (its traceback belongs in the log); True for anything problem_for knows."""
    return isinstance(exc, (AcmeProblem, VpncaError))


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
