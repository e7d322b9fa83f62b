"""Storage: SQLAlchemy Core tables, the ORM mapped onto them, one repository (SQLite by default,
PostgreSQL to scale).

The ORM classes and the Store are imported on first use, so that a command that reads through the Core
`Database` alone (`vpnca status`, `list`, `report`) never loads the ORM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vpnca.store.tables import CertStatus

if TYPE_CHECKING:
    from vpnca.store.database import Database
    from vpnca.store.models import (
        AcmeAccount,
        AcmeAuthorization,
        AcmeChallenge,
        AcmeEabKey,
        AcmeNonce,
        AcmeOrder,
        AuditEntry,
        CaCertificate,
        CertificateRecord,
        CrlRecord,
        EnrollmentToken,
        JobRun,
        OcspResponseRecord,
        PendingRequest,
    )
    from vpnca.store.repository import Store

def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    home = {"Database": "database", "Store": "repository"}.get(name, "models")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "AcmeAccount", "AcmeAuthorization", "AcmeChallenge", "AcmeEabKey", "AcmeNonce", "AcmeOrder", "AuditEntry",
    "CaCertificate", "CertStatus", "CertificateRecord", "CrlRecord", "Database", "EnrollmentToken", "JobRun",
    "OcspResponseRecord", "PendingRequest", "Store",
]
