"""Storage: SQLAlchemy models behind one repository (SQLite by default, PostgreSQL to scale)."""

from vpnca.store.models import (
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
    "AuditEntry", "CaCertificate", "CertStatus", "CertificateRecord", "CrlRecord", "EnrollmentToken", "JobRun", "OcspResponseRecord", "PendingRequest",
    "Store",
]
