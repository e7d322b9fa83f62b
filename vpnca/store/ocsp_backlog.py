"""The OCSP pre-signing backlog, read by keyset pages and shared between worker processes.

A certificate is in the backlog when its pre-signed (SHA-256 CertID) answer is missing, due for
refresh, or tells another status than the certificate has now. Each `vpnca serve` worker takes the
certificates whose serial ends in its share of the 256 two-hex-digit suffixes, so that the workers,
each with its own token session, sign side by side without claiming rows from one another.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select

from vpnca.store.database import Database
from vpnca.store.prepared import Prepared
from vpnca.store.tables import CertStatus, certificates, ocsp_responses

SIGNED_STATUSES = (CertStatus.VALID.value, CertStatus.REVOKED.value)  # the others have no OCSP answer
CHECKED_HASH = "sha256"  # every pre-signing writes all the CertID hashes at once: one stands for them


@dataclass(frozen=True)
class BacklogEntry:
    """What a pre-signed answer says of one certificate."""

    serial: str
    status: str
    revoked_at: datetime | None
    revocation_reason: str | None


class BacklogReader:
    """Keyset pages of one issuer's backlog, for one share of the serials: the next `limit` certificates
    in a status (one of SIGNED_STATUSES) with a serial above `after`, in serial order, straight from the
    (status, serial) index, so that each page reads on from where the previous one ended. The query is
    compiled once and run on the driver's cursor: a pre-signing run reads a million rows."""

    def __init__(self, store: Database, issuer: str, *, suffixes: Sequence[str] | None = None,
                 limit: int = 500) -> None:
        c, o = certificates, ocsp_responses
        answer = o.alias("answer")
        refresh_before = bindparam("refresh_before", type_=o.c.next_update.type)
        query = (select(c.c.serial, c.c.status, c.c.revoked_at, c.c.revocation_reason)
                 .select_from(c.outerjoin(answer, and_(answer.c.serial == c.c.serial,
                                                       answer.c.hash_algorithm == CHECKED_HASH)))
                 .where(c.c.status == bindparam("status", type_=c.c.status.type),
                        c.c.serial > bindparam("after", type_=c.c.serial.type), c.c.issuer == issuer,
                        or_(answer.c.serial.is_(None), answer.c.next_update < refresh_before,
                            and_(answer.c.cert_status == "good", c.c.status != CertStatus.VALID.value),
                            and_(answer.c.cert_status != "good", c.c.status == CertStatus.VALID.value)))
                 .order_by(c.c.serial).limit(limit))
        if suffixes is not None:
            ending = func.substr(c.c.serial, func.length(c.c.serial) - 1, 2)
            # one parameter each (not an expanding IN, which is rendered only at execution)
            query = query.where(ending.in_([bindparam(f"suffix_{i}", value, type_=c.c.serial.type)
                                            for i, value in enumerate(suffixes)]))
        self._store = store
        self._query = Prepared(query, store.engine.dialect)
        dialect = store.engine.dialect
        self._revoked_at = c.c.revoked_at.type.dialect_impl(dialect).result_processor(dialect, None)

    def page(self, status: str, after: str, refresh_before: datetime) -> list[BacklogEntry]:
        convert = self._revoked_at or (lambda value: value)
        with self._store._reachable(), self._store.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                rows = self._query.run(cursor, status=status, after=after,
                                       refresh_before=refresh_before).fetchall()
            finally:
                cursor.close()
        return [BacklogEntry(serial, state, None if revoked_at is None else convert(revoked_at), reason)
                for serial, state, revoked_at, reason in rows]


ANSWER_COLUMNS = ("serial", "hash_algorithm", "cert_status", "this_update", "next_update", "der")


def save_answers(store: Database, rows: list[dict[str, Any]]) -> None:
    """Insert or replace pre-signed answers (dicts of the ocsp_responses columns) in one transaction."""
    write_answer_values(store, answer_values(store, rows))


def answer_values(store: Database, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The driver's parameters for answers (dicts of the ocsp_responses columns), in ANSWER_COLUMNS order,
    the times converted once per distinct value: pre-signing writes a thousand rows a page."""
    o = ocsp_responses
    converters = {name: o.c[name].type.bind_processor(store.engine.dialect) for name in ("this_update",
                                                                                          "next_update")}
    converted: dict[tuple[str, datetime], Any] = {}

    def bound(name: str, value: datetime) -> Any:
        if (name, value) not in converted:
            convert = converters[name]
            converted[(name, value)] = convert(value) if convert is not None else value
        return converted[(name, value)]

    return [(r["serial"], r["hash_algorithm"], r["cert_status"], bound("this_update", r["this_update"]),
             bound("next_update", r["next_update"]), r["der"]) for r in rows]


ROWS_PER_STATEMENT = 500  # 3,000 parameters: within SQLite's (32,766) and PostgreSQL's (65,535) limits


def write_answer_values(store: Database, values: list[tuple[Any, ...]]) -> None:
    """Insert or replace answers given as `answer_values` in one transaction: INSERT ... ON CONFLICT
    statements of up to ROWS_PER_STATEMENT rows each, run by the driver over the flattened tuples
    (SQLite and PostgreSQL alike). One statement for many rows, rather than a row at a time, holds the
    GIL while it binds and releases it once while the database works: the signing thread beside it
    does not wait for the GIL after every row."""
    if not values:
        return
    with store.write_core() as conn:
        for start in range(0, len(values), ROWS_PER_STATEMENT):
            chunk = values[start:start + ROWS_PER_STATEMENT]
            conn.exec_driver_sql(_upsert_sql(store.engine.dialect.paramstyle, len(chunk)),
                                 tuple(value for row in chunk for value in row))


@functools.lru_cache(maxsize=8)
def _upsert_sql(paramstyle: str, rows: int) -> str:
    o = ocsp_responses
    placeholder = "?" if paramstyle == "qmark" else "%s"
    row = f"({', '.join([placeholder] * len(ANSWER_COLUMNS))})"
    return (f"INSERT INTO {o.name} ({', '.join(ANSWER_COLUMNS)}) VALUES {', '.join([row] * rows)} "
            "ON CONFLICT (serial, hash_algorithm) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in ANSWER_COLUMNS[2:]))


def count_without_fresh_answer(store: Database, issuer: str, refresh_before: datetime,
                               by_status: Mapping[str, int] | None = None) -> int:
    """How many certificates have no answer fresh until `refresh_before`, counted on indexes alone
    (certificates by issuer and status, answers by hash and nextUpdate): fast at any size, for
    `vpnca status`, which passes the store's counts by status: they are the issuer's when it is the only
    one. A status change not yet re-signed is not in it (the pre-signing job finds it)."""
    c, o = certificates, ocsp_responses
    with store._reachable(), store.engine.connect() as conn:
        if by_status is not None and conn.scalar(select(func.min(c.c.issuer))) == issuer == \
                conn.scalar(select(func.max(c.c.issuer))):
            signed = sum(by_status.get(status, 0) for status in SIGNED_STATUSES)
        else:
            signed = int(conn.scalar(select(func.count()).select_from(c).where(
                c.c.issuer == issuer, c.c.status.in_(SIGNED_STATUSES))) or 0)
        fresh = conn.scalar(select(func.count()).select_from(o).where(
            o.c.hash_algorithm == CHECKED_HASH, o.c.next_update >= refresh_before)) or 0
    return max(0, signed - int(fresh))
