"""RFC 8555 section 6.7 problem documents: the only way ACME errors leave the server."""

from __future__ import annotations

import json
from typing import Any

ERROR_NS = "urn:ietf:params:acme:error:"
PROBLEM_JSON = "application/problem+json"


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


def malformed(detail: str, status: int = 400) -> AcmeProblem:
    return AcmeProblem("malformed", detail, status)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail, 403)


def not_found(what: str) -> AcmeProblem:
    return AcmeProblem("malformed", f"no such {what}", 404)
