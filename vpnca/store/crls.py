"""What CRLs are built from: the stored DER of revoked entries, read in bulk.

Every revoked certificate's entry is encoded once, when it is revoked (`Store.revoke` writes
`certificates.crl_entry`); a CRL's revokedCertificates is then the concatenation of the entries a query
selects, which the database concatenates itself (SQLite `group_concat`, PostgreSQL `string_agg`). Rows
revoked before the column existed are encoded here on first use and written back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, and_, cast, func, literal, select, update

from vpnca.store.models import CertificateRecord, CrlRecord
from vpnca.store.repository import Store
from vpnca.store.tables import CertStatus
from vpnca.x509util import crl_entry_der

_cert = CertificateRecord


def _revoked(issuer: str) -> ColumnElement[bool]:
    return and_(_cert.issuer == issuer, _cert.status == CertStatus.REVOKED)


def crl_entries(store: Store, issuer: str, *, shard: int | None = None,
                expired_since: datetime | None = None) -> tuple[bytes, int]:
    """The entries (concatenated DER, and their number) of every revoked or held certificate of
    `issuer` (of one shard, if given), leaving out those that expired before `expired_since`."""
    where = _revoked(issuer)
    if shard is not None:
        where = and_(where, _cert.crl_shard == shard)
    if expired_since is not None:
        where = and_(where, _cert.not_after >= expired_since)
    return _entries(store, where)


def crl_entries_since(store: Store, issuer: str, since: datetime) -> tuple[bytes, int]:
    """The entries of certificates revoked at or after `since` (a delta CRL's additions)."""
    where = and_(_revoked(issuer), _cert.revoked_at >= since)
    return _entries(store, where)


def released_since(store: Store, issuer: str, since: datetime) -> list[tuple[str, datetime]]:
    """(serial, released at) of holds released after `since` (a delta CRL's removeFromCRL entries)."""
    query = (select(_cert.serial, _cert.hold_released_at)
             .where(_cert.issuer == issuer, _cert.status == CertStatus.VALID, _cert.hold_released_at > since))
    with store.read() as session:
        return [(serial, released) for serial, released in session.execute(query) if released is not None]


def _entries(store: Store, where: ColumnElement[bool]) -> tuple[bytes, int]:
    """The stored entries of the rows `where` selects, concatenated by the database itself in one
    value (no Python object per entry), and how many there are."""
    column = _cert.crl_entry
    if store.engine.dialect.name == "sqlite":
        joined: Any = cast(func.group_concat(column, ""), LargeBinary)
    else:  # PostgreSQL
        joined = func.string_agg(column, literal(b"", LargeBinary))
    with store.read() as session:
        query = select(joined, func.count(column), func.count()).where(where)
        blob, stored, rows = session.execute(query).one()
    entries, count = bytes(blob or b""), int(stored)
    if count < rows:
        missing = _encode_missing(store, where)
        entries, count = entries + b"".join(missing), count + len(missing)
    return entries, count


def _encode_missing(store: Store, where: ColumnElement[bool]) -> list[bytes]:
    """Encode and store the entries of rows revoked before entries were kept."""
    with store.write() as session:
        rows = session.execute(select(_cert.serial, _cert.revoked_at, _cert.revocation_reason,
                                      _cert.invalidity_date).where(where, _cert.crl_entry.is_(None))).all()
        encoded = []
        for serial, revoked_at, reason, invalidity in rows:
            assert revoked_at is not None, "a revoked certificate has its revocation time"
            der = crl_entry_der(int(serial, 16), revoked_at, reason, invalidity)
            session.execute(update(_cert).where(_cert.serial == serial).values(crl_entry=der))
            encoded.append(der)
    return encoded


def latest_crl_header(store: Store, name: str, *, delta: bool = False) -> tuple[int, datetime] | None:
    """(number, thisUpdate) of the latest full (or delta) CRL named `name`, without reading its DER."""
    query = (select(CrlRecord.number, CrlRecord.this_update)
             .where(CrlRecord.ca_name == name,
                    CrlRecord.delta_base.is_not(None) if delta else CrlRecord.delta_base.is_(None))
             .order_by(CrlRecord.number.desc()).limit(1))
    with store.read() as session:
        row = session.execute(query).first()
    return None if row is None else (row.number, row.this_update)


def crl_shards_of(store: Store, serials: list[str]) -> dict[str, int | None]:
    """The CRL shard of each of these certificates (None: the CA's whole CRL)."""
    with store.read() as session:
        rows = session.execute(select(_cert.serial, _cert.crl_shard).where(_cert.serial.in_(serials)))
        return {row.serial: row.crl_shard for row in rows}
