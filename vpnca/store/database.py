"""The database without the ORM: the engine, the writer lock, the schema's revision, the audit chain's
appends, and every read the operator's commands make (`vpnca status`, `list`, `report`, `audit`), in
SQLAlchemy Core over vpnca/store/tables.py. The Store (vpnca/store/repository.py) adds the ORM's
reads and writes on top; a command that needs no more than this never imports the ORM.

SQLite runs in WAL mode with synchronous=FULL, so a committed row survives a crash, and write
transactions start with BEGIN IMMEDIATE so concurrent writers queue on the lock instead of failing
on upgrade. On PostgreSQL the audit chain head is taken under a transaction-scoped advisory lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Row, create_engine, event, func, insert, select, text
from sqlalchemy.exc import InterfaceError, OperationalError

from vpnca.audit import GENESIS_HASH, canonical_details, entry_hash
from vpnca.errors import NotFound, StoreUnavailable
from vpnca.store import migrations
from vpnca.store.tables import CertStatus, audit_log, ca_certificates, certificates, crls, job_runs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

AUDIT_LOCK_KEY = 0x7670_6E63  # "vpnc": the advisory lock serialising audit appends on PostgreSQL


def utcnow() -> datetime:
    return datetime.now(UTC)


def audit_row(head: Any, actor: str, action: str, details: dict[str, Any]) -> dict[str, Any]:
    """The next link of the chain after `head` (seq, entry_hash), or the first one."""
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    created_at = utcnow().isoformat()
    body = canonical_details(details)
    return {"seq": seq, "created_at": created_at, "actor": actor, "action": action, "details": body,
            "prev_hash": prev, "entry_hash": entry_hash(prev, seq, created_at, actor, action, body)}


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("vpnca_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class WriterLock:
    """Serialises SQLite writers: a thread lock, then an flock on a file beside the database.

    Waiters on SQLite's own lock poll with sleeps of up to 100 ms; waiters here are woken the moment
    the lock is free, which keeps the latency tail of concurrent issuance short.
    """

    def __init__(self, path: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = path

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock


class Database:
    """The database of a CA, through SQLAlchemy Core."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write_engine = self.engine.execution_options(vpnca_write=True)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        database = self.engine.url.database
        self._writer = WriterLock(f"{database}.writelock") if self.engine.dialect.name == "sqlite" and \
            database and database != ":memory:" else None
        dbapi = self.engine.dialect.loaded_dbapi
        self._unavailable: tuple[type[Exception], ...] = (
            OperationalError, InterfaceError, dbapi.OperationalError, dbapi.InterfaceError)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Losing the database (stopped, unreachable, locked) is StoreUnavailable to every caller,
        whether it came through SQLAlchemy or straight from the driver on a raw connection."""
        try:
            yield
        except self._unavailable as exc:
            raise StoreUnavailable("the database cannot be reached") from exc

    @contextmanager
    def write_core(self) -> Iterator[Connection]:
        """A Core write transaction, under the writer lock on SQLite: the issuance hot path, the audit
        appends, the schema upgrade, pre-signed answers; without the ORM's unit of work."""
        if self._writer is None:
            with self._reachable(), self._write_engine.begin() as conn:
                yield conn
            return
        with self._reachable(), self._writer.hold(), self._write_engine.begin() as conn:
            yield conn

    # -- schema (Alembic migrations: vpnca/store/migrations) ------------------------------------

    def schema_state(self) -> migrations.SchemaState:
        with self.engine.connect() as conn:
            return migrations.schema_state(conn)

    def schema_revision(self) -> str | None:
        """The database's Alembic revision; None for an empty database or one from before migrations."""
        return self.schema_state().current

    def upgrade_schema(self, revision: str = "head") -> tuple[str | None, str]:
        """Migrate the database to `revision` (default: this vpnca's head) in one transaction; a database
        from before migrations is adopted at the baseline first. Returns (from, to) revisions."""
        with self.write_core() as conn:
            before, after = migrations.upgrade(conn, revision)
        return before.current, after

    def require_current_schema(self) -> None:
        """Raise SchemaOutdated unless the database is at this vpnca's head revision."""
        with self.engine.connect() as conn:
            if migrations.is_current(conn):
                return
        problem = self.schema_state().problem()
        if problem is not None:
            raise problem

    def init_schema(self) -> None:
        """For a new CA: an empty database gets the current schema; an existing one must be current."""
        if self.schema_state().empty:
            self.upgrade_schema()
        self.require_current_schema()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- audit ---------------------------------------------------------------------------

    def _append_audit(self, session: Session | Connection, actor: str, action: str,
                      details: dict[str, Any]) -> None:
        if self.is_postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
        head = session.execute(
            select(audit_log.c.seq, audit_log.c.entry_hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).first()
        session.execute(insert(audit_log), audit_row(head, actor, action, details))

    def append_audit(self, session: Session | Connection, actor: str, action: str,
                     details: dict[str, Any]) -> None:
        """Append one audit entry inside the caller's write transaction (the store's own modules, such
        as the ACME state, write their rows and its entry at once): the one append path."""
        self._append_audit(session, actor, action, details)

    def audit(self, actor: str, action: str, details: dict[str, Any]) -> None:
        """Append one audit entry in its own transaction."""
        with self.write_core() as conn:
            self._append_audit(conn, actor, action, details)

    def latest_audit(self, action: str) -> Row[Any] | None:
        """The newest entry of `action`."""
        with self._reachable(), self.engine.connect() as conn:
            return conn.execute(select(audit_log).where(audit_log.c.action == action)
                                .order_by(audit_log.c.seq.desc()).limit(1)).first()

    def audit_head(self) -> tuple[int, str]:
        """(seq, entry_hash) of the newest audit entry; (0, the genesis hash) for an empty chain."""
        with self._reachable(), self.engine.connect() as conn:
            head = conn.execute(select(audit_log.c.seq, audit_log.c.entry_hash)
                                .order_by(audit_log.c.seq.desc()).limit(1)).first()
        return (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)

    def audit_entry(self, seq: int) -> Row[Any] | None:
        with self._reachable(), self.engine.connect() as conn:
            return conn.execute(select(audit_log).where(audit_log.c.seq == seq)).first()

    def audit_seq_at(self, moment: datetime) -> int:
        """The seq of the first audit entry written at or after `moment` (head + 1 if none): a binary
        search over the primary key, as entries are appended in time order (no index on created_at)."""
        low, high = 1, self.audit_head()[0] + 1
        with self._reachable(), self.engine.connect() as conn:
            while low < high:
                middle = (low + high) // 2
                written = conn.scalar(select(audit_log.c.created_at).where(audit_log.c.seq == middle))
                if written is None or datetime.fromisoformat(written) < moment:
                    low = middle + 1
                else:
                    high = middle
        return low

    def iter_audit(self, first: int = 1, last: int | None = None, *, action: str | None = None,
                   batch: int = 1000) -> Generator[Any, None, None]:
        """Audit entries with first <= seq <= last (all columns), in chain order, streamed."""
        table = audit_log
        query = select(table).where(table.c.seq >= first).order_by(table.c.seq)
        if last is not None:
            query = query.where(table.c.seq <= last)
        if action is not None:
            query = query.where(table.c.action == action)
        return self._stream(query, batch)

    # -- certificates ----------------------------------------------------------------------------

    def count_by_status(self) -> dict[str, int]:
        """Certificates by status, counted as SQLite counts fastest (a third of a GROUP BY's time at a
        million rows): the whole table, and the index range of each status but valid, which is the rest."""
        table = certificates
        others = [status.value for status in CertStatus if status != CertStatus.VALID]
        with self._reachable(), self.engine.connect() as conn:
            total = int(conn.scalar(select(func.count()).select_from(table)) or 0)
            counts = {status: int(count) for status, count in conn.execute(
                select(table.c.status, func.count()).where(table.c.status.in_(others))
                .group_by(table.c.status))}
        if total > sum(counts.values()):
            counts[CertStatus.VALID.value] = total - sum(counts.values())
        return counts

    # -- operators' streaming queries (`vpnca list`, `vpnca report expiring`, `vpnca audit export`) --------

    REGISTER_COLUMNS = ("serial", "issuer", "profile", "subject", "identities", "status", "not_before",
                        "not_after", "requester", "protocol", "created_at", "error", "revoked_at",
                        "revocation_reason", "invalidity_date", "hold_released_at", "renew_after")

    def _stream(self, query: Any, batch: int) -> Generator[Any, None, None]:
        """Rows of a Core query fetched `batch` at a time (a server-side cursor on PostgreSQL, the
        driver's stepping cursor on SQLite): memory stays that of one batch, whatever the table's size."""
        with self._reachable(), self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
            try:
                yield from result
            finally:
                result.close()

    def iter_certificates(
        self, *, status: str | None = None, on_hold: bool = False, profile: str | None = None,
        identity: str | None = None, expires_before: datetime | None = None,
        expires_after: datetime | None = None, issued_since: datetime | None = None,
        after: str | None = None, limit: int | None = None, by_expiry: bool = False, batch: int = 500,
    ) -> Generator[Any, None, None]:
        """Certificate rows (every column but the DER) streamed in keyset order: by serial, or
        (`by_expiry`) by (not_after, serial). `after`: the serial the previous page ended with.
        `identity` is matched as a case-insensitive substring of the stored identities (the caller checks
        the decoded values); `expires_before` is exclusive, `expires_after` and `issued_since` inclusive."""
        from sqlalchemy import and_, or_

        c = certificates.c
        query = select(*(c[name] for name in self.REGISTER_COLUMNS))
        if status:
            query = query.where(c.status == status)
        if on_hold:
            query = query.where(c.status == CertStatus.REVOKED.value,
                                c.revocation_reason == "certificateHold")
        if profile:
            query = query.where(c.profile == profile)
        if identity:
            escaped = identity.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(c.identities.ilike(f"%{escaped}%", escape="\\"))
        if expires_before is not None:
            query = query.where(c.not_after < expires_before)
        if expires_after is not None:
            query = query.where(c.not_after >= expires_after)
        if issued_since is not None:
            query = query.where(c.created_at >= issued_since)
        if by_expiry:
            if after is not None:
                with self._reachable(), self.engine.connect() as conn:
                    moment = conn.scalar(select(c.not_after).where(c.serial == after))
                if moment is None:
                    raise NotFound(f"no certificate with serial {after}")
                query = query.where(or_(c.not_after > moment, and_(c.not_after == moment, c.serial > after)))
            query = query.order_by(c.not_after, c.serial)
        else:
            if after is not None:
                query = query.where(c.serial > after)
            query = query.order_by(c.serial)
        if limit is not None:
            query = query.limit(limit)
        return self._stream(query, batch)

    def iter_register(self, since: datetime, until: datetime, *, batch: int = 1000
                      ) -> Generator[Any, None, None]:
        """The register of a period [since, until): certificates issued or revoked in it, and every
        certificate that was valid at some moment of it, by serial."""
        from sqlalchemy import and_, or_

        c = certificates.c
        query = (select(*(c[name] for name in self.REGISTER_COLUMNS)).where(or_(
            and_(c.created_at >= since, c.created_at < until),
            and_(c.revoked_at >= since, c.revoked_at < until),
            and_(c.status.in_([CertStatus.VALID.value, CertStatus.REVOKED.value]),
                 c.not_after >= since, c.not_before < until,
                 or_(c.revoked_at.is_(None), c.revoked_at >= since))))
                 .order_by(c.serial))
        return self._stream(query, batch)

    # -- CA certificates, CRLs, jobs ---------------------------------------------------------------

    def ca_certificates(self, role: str | None = None) -> Sequence[Row[Any]]:
        query = select(ca_certificates).order_by(ca_certificates.c.id)
        if role:
            query = query.where(ca_certificates.c.role == role)
        with self._reachable(), self.engine.connect() as conn:
            return list(conn.execute(query))

    def current_ca(self, role: str) -> Row[Any] | None:
        found = self.ca_certificates(role)
        return found[-1] if found else None

    def latest_crl(self, ca_name: str, *, delta: bool = False) -> Row[Any] | None:
        query = select(crls).where(crls.c.ca_name == ca_name,
                                   crls.c.delta_base.is_not(None) if delta else crls.c.delta_base.is_(None))
        with self._reachable(), self.engine.connect() as conn:
            return conn.execute(query.order_by(crls.c.number.desc()).limit(1)).first()

    def job_runs(self) -> list[Row[Any]]:
        with self._reachable(), self.engine.connect() as conn:
            return list(conn.execute(select(job_runs).order_by(job_runs.c.job)))
