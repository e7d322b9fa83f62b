"""Storage: SQLAlchemy models behind one repository (SQLite by default, PostgreSQL to scale)."""

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
    CertStatus,
    CrlRecord,
    EnrollmentToken,
    JobRun,
    OcspResponseRecord,
    PendingRequest,
)
from vpnca.store.repository import Store

__all__ = [
    "AcmeAccount", "AcmeAuthorization", "AcmeChallenge", "AcmeEabKey", "AcmeNonce", "AcmeOrder",
    "AuditEntry", "CaCertificate", "CertStatus", "CertificateRecord", "CrlRecord", "EnrollmentToken",
    "JobRun", "OcspResponseRecord", "PendingRequest", "Store",
]
