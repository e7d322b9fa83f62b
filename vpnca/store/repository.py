"""The Store: the ORM's reads and writes and the issuance hot path, on top of the Core Database
(vpnca/store/database.py); the two together are the one place that reads and writes the database."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Dialect,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vpnca.errors import Conflict, NotAuthenticated, NotFound
from vpnca.store import tables
from vpnca.store.database import AUDIT_LOCK_KEY, Database, audit_row, utcnow
from vpnca.store.models import (
    AuditEntry,
    CaCertificate,
    CertificateRecord,
    CrlRecord,
    EnrollmentToken,
    JobRun,
    OcspResponseRecord,
    PendingRequest,
)
from vpnca.store.prepared import Prepared
from vpnca.store.tables import CertStatus
from vpnca.x509util import crl_entry_der


class HotStatements:
    """The statements of the issuance hot path, compiled once for the engine's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        certs, tokens, audit = tables.certificates, tables.enrollment_tokens, tables.audit_log
        self.spend_token = Prepared(
            update(tokens).where(tokens.c.token_id == bindparam("token_id_p"), tokens.c.used_at.is_(None),
                                 tokens.c.expires_at > bindparam("now_p"))
            .values(used_at=bindparam("now_p"), used_for_serial=bindparam("serial_p")), dialect)
        self.reserve = Prepared(insert(certs), dialect)
        self.complete = Prepared(
            update(certs)
            .where(certs.c.serial == bindparam("serial_p"), certs.c.status == CertStatus.ISSUING.value)
            .values(der=bindparam("der_p"), status=CertStatus.VALID.value), dialect)
        self.audit_head = Prepared(
            select(audit.c.seq, audit.c.entry_hash).order_by(audit.c.seq.desc()).limit(1), dialect)
        self.audit_insert = Prepared(insert(audit), dialect)
        self.audit_lock = Prepared(select(func.pg_advisory_xact_lock(bindparam("key"))), dialect)
        self.token = Prepared(select(tokens).where(tokens.c.token_id == bindparam("token_id_p")), dialect)
        self.token_results = {column.name: column.type.dialect_impl(dialect).result_processor(dialect, None)
                              for column in tokens.columns}  # name -> the type's conversion (or None)


class SerialCollision(Exception):
    """The random serial is already taken; draw another."""


class CrlNumberTaken(Exception):
    """Another publisher recorded this CRL number first; sign again with the next one."""


class GroupCommitter:
    """SQLite group commit for the issuance hot path: one writer thread runs the queued operations of
    concurrent issuances in one transaction, each inside its own SAVEPOINT, so a batch costs one lock
    and one fsync; every caller gets its own result (or exception) only after the batch is durable."""

    MAX_BATCH = 64
    LINGER_SECONDS = 0.002  # how long a batch waits for issuances that are on their way to it

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.Queue[tuple[Callable[[Any], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, operation: Callable[[Any], Any]) -> Any:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="vpnca-group-commit", daemon=True)
                self._thread.start()
        future: Future[Any] = Future()
        self._queue.put((operation, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.LINGER_SECONDS
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                # more issuances are being signed: wait a moment so their writes share this commit
                remaining = deadline - time.monotonic()
                if len(self._store.issuing) <= len(batch) or remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
            try:
                with self._store.write_core() as conn:
                    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                    for operation, future in batch:
                        cursor.execute("SAVEPOINT hot_write")
                        try:
                            result = operation(cursor)
                            cursor.execute("RELEASE SAVEPOINT hot_write")
                            outcomes.append((future, result, None))
                        except Exception as exc:  # noqa: BLE001 - handed to that caller alone
                            cursor.execute("ROLLBACK TO SAVEPOINT hot_write")
                            cursor.execute("RELEASE SAVEPOINT hot_write")
                            outcomes.append((future, None, exc))
            except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of the batch is durable
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for future, result, error in outcomes:
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)


class ChangeWatch:
    """SQLite's `PRAGMA data_version` on a dedicated connection: it changes whenever another
    connection has committed (a few microseconds to read, no table touched)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._raw: Any = None
        self._version = -1

    def changed(self) -> bool:
        """Whether anything was committed since the last call (True the first time)."""
        with self._store._reachable():
            if self._raw is None:
                self._raw = self._store.engine.raw_connection()
            try:
                cursor = self._raw.cursor()
                cursor.execute("PRAGMA data_version")
                version = int(cursor.fetchone()[0])
                cursor.close()
            except BaseException:
                raw, self._raw = self._raw, None
                with contextlib.suppress(Exception):  # the connection is being dropped anyway
                    raw.invalidate()
                raise
        if version == self._version:
            return False
        self._version = version
        return True


class Store(Database):
    """The repository over the vpnca database: Database's Core reads and appends, and the ORM's."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._group = GroupCommitter(self) if self._writer is not None else None
        self.issuing: set[str] = set()  # serials reserved and being signed in this process
        self._integrity_error: type[Exception] = self.engine.dialect.loaded_dbapi.IntegrityError

    @functools.cached_property
    def _hot(self) -> HotStatements:
        """The issuance path's prepared statements, compiled on first use: a read-only command needs none."""
        return HotStatements(self.engine.dialect)

    def _hot_write(self, operation: Callable[[Any], Any]) -> Any:
        """A short write on the issuance path, run on a DBAPI cursor with prepared statements:
        group-committed on SQLite, a plain transaction elsewhere."""
        if self._group is not None:
            with self._reachable():
                return self._group.run(operation)
        with self.write_core() as conn:
            return operation(conn.connection.dbapi_connection.cursor())  # type: ignore[union-attr]

    # -- schema (Alembic migrations: vpnca/store/migrations) ------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reachable(), Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        if self._writer is None:
            with self._reachable(), Session(self._write_engine, expire_on_commit=False) as session, \
                    session.begin():
                yield session
            return
        with self._reachable(), self._writer.hold(), \
                Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- audit ---------------------------------------------------------------------------

    def _append_audit_hot(self, cursor: Any, actor: str, action: str, details: dict[str, Any]) -> None:
        """`_append_audit` on the hot path's cursor."""
        if self.is_postgres:
            self._hot.audit_lock.run(cursor, key=AUDIT_LOCK_KEY)
        head = self._hot.audit_head.run(cursor).fetchone()
        self._hot.audit_insert.run(cursor, **audit_row(head, actor, action, details))

    def audit_entries(self) -> list[AuditEntry]:
        with self.read() as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))

    # -- leaf certificates -------------------------------------------------------------------

    def reserve_serial(self, record: CertificateRecord, *, spend_token: str | None = None) -> None:
        """Insert the `issuing` row that reserves the serial, spending the enrollment token in the
        same transaction; SerialCollision if the serial is taken, NotAuthenticated if the token is
        already spent or expired (then nothing is written)."""
        values = {column.key: getattr(record, column.key) for column in tables.certificates.columns}

        def reserve(cursor: Any) -> None:
            if spend_token is not None:
                spent = self._hot.spend_token.run(cursor, token_id_p=spend_token, now_p=record.created_at,
                                                  serial_p=record.serial)
                if not spent.rowcount:
                    raise NotAuthenticated(f"token {spend_token} was already used or has expired")
            self._hot.reserve.run(cursor, **values)

        try:
            self._hot_write(reserve)
        except self._integrity_error as exc:
            raise SerialCollision(record.serial) from exc
        self.issuing.add(record.serial)

    def complete_issuance(self, serial: str, der: bytes, actor: str, details: dict[str, Any]) -> None:
        """Store the signed certificate and its audit entry in one transaction."""

        def complete(cursor: Any) -> None:
            done = self._hot.complete.run(cursor, serial_p=serial, der_p=der)
            if not done.rowcount:
                raise Conflict(f"serial {serial} is not being issued")
            self._append_audit_hot(cursor, actor, "issue", details)

        try:
            self._hot_write(complete)
        finally:
            self.issuing.discard(serial)

    def fail_issuance(self, serial: str, error: str, actor: str) -> None:
        """Mark a reserved serial failed (never reused) and give back the token it spent: a token is
        used up only by a certificate that was issued."""
        self.issuing.discard(serial)
        with self.write() as session:
            record = session.get(CertificateRecord, serial)
            if record is not None and record.status == CertStatus.ISSUING:
                self._fail_reserved(session, record, error, actor, "issue-failed")

    def _fail_reserved(self, session: Session, record: CertificateRecord, error: str, actor: str,
                       action: str) -> None:
        record.status = CertStatus.FAILED
        record.error = error[:2000]
        released = session.execute(
            update(EnrollmentToken).where(EnrollmentToken.used_for_serial == record.serial)
            .values(used_at=None, used_for_serial=None).returning(EnrollmentToken.token_id)).scalars().all()
        self._append_audit(session, actor, action, {"serial": record.serial, "error": error[:500],
                                                    **({"token_released": released[0]} if released else {})})

    def resolve_interrupted(self, started_before: datetime, actor: str) -> list[str]:
        """Reservations left `issuing` by a process that stopped before recording the certificate.
        The signed certificate and the `valid` status are written in one transaction, so such a
        certificate was never delivered: the row becomes `failed` and its token usable again."""
        with self.write() as session:
            stuck = session.scalars(select(CertificateRecord).where(
                CertificateRecord.status == CertStatus.ISSUING,
                CertificateRecord.created_at < started_before)).all()
            for record in stuck:
                self._fail_reserved(session, record, "interrupted before the certificate was recorded", actor,
                                    "issue-interrupted")
            return [record.serial for record in stuck]

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        with self.read() as session:
            return session.get(CertificateRecord, serial)

    def list_certificates(
        self, *, status: str | None = None, profile: str | None = None, limit: int | None = None
    ) -> list[CertificateRecord]:
        query = select(CertificateRecord).order_by(CertificateRecord.created_at)
        if status:
            query = query.where(CertificateRecord.status == status)
        if profile:
            query = query.where(CertificateRecord.profile == profile)
        if limit:
            query = query.limit(limit)
        with self.read() as session:
            return list(session.scalars(query))

    def list_expiring(self, start: datetime, end: datetime) -> list[CertificateRecord]:
        """Valid certificates whose notAfter falls in [start, end], soonest first (index on status,
        not_after)."""
        with self.read() as session:
            return list(session.scalars(
                select(CertificateRecord)
                .where(CertificateRecord.status == CertStatus.VALID, CertificateRecord.not_after >= start,
                       CertificateRecord.not_after <= end).order_by(CertificateRecord.not_after)))

    def count_expiring(self, start: datetime, end: datetime) -> int:
        with self.read() as session:
            return int(session.scalar(
                select(func.count()).select_from(CertificateRecord)
                .where(CertificateRecord.status == CertStatus.VALID, CertificateRecord.not_after >= start,
                       CertificateRecord.not_after <= end)) or 0)

    # -- operators' streaming queries (`vpnca list`, `vpnca report expiring`, `vpnca audit export`) --------


    def revoke(
        self,
        serial: str,
        reason: str,
        *,
        actor: str,
        revoked_at: datetime,
        invalidity_date: datetime | None = None,
    ) -> CertificateRecord:
        """Revoke (or put on hold) a valid or held certificate, with its audit entry."""
        with self.write() as session:
            record = session.get(CertificateRecord, serial)
            if record is None or record.status in (CertStatus.ISSUING, CertStatus.FAILED):
                raise NotFound(f"no issued certificate with serial {serial}")
            if record.status == CertStatus.REVOKED:
                if record.revocation_reason != "certificateHold":
                    raise Conflict(f"certificate {serial} is already revoked ({record.revocation_reason})")
                if reason == "certificateHold":
                    raise Conflict(f"certificate {serial} is already on hold")
            record.status = CertStatus.REVOKED
            # a held certificate keeps its original revocation date when revoked for good
            if record.revoked_at is None:
                record.revoked_at = revoked_at
            record.revocation_reason = reason
            record.invalidity_date = invalidity_date
            record.crl_entry = crl_entry_der(int(serial, 16), record.revoked_at, reason, invalidity_date)
            self._append_audit(session, actor, "revoke", {
                "serial": serial, "reason": reason,
                "invalidity_date": invalidity_date.isoformat() if invalidity_date else None,
            })
            return record

    def release_hold(self, serial: str, *, actor: str) -> CertificateRecord:
        with self.write() as session:
            record = session.get(CertificateRecord, serial)
            if record is None:
                raise NotFound(f"no issued certificate with serial {serial}")
            if record.status != CertStatus.REVOKED or record.revocation_reason != "certificateHold":
                raise Conflict(f"certificate {serial} is not on hold")
            record.status = CertStatus.VALID
            record.revoked_at = None
            record.revocation_reason = None
            record.invalidity_date = None
            record.crl_entry = None
            record.hold_released_at = utcnow()
            self._append_audit(session, actor, "release-hold", {"serial": serial})
            return record

    # -- early renewal (`vpnca renew-early`; ACME renewalInfo, RFC 9773; `vpnca agent`) ----------------

    def mark_renew_early(self, *, actor: str, serials: Sequence[str] = (), profile: str | None = None,
                         everything: bool = False) -> list[str]:
        """Ask for the renewal of valid, unexpired certificates now: the ones named, a profile's, or
        (`everything`) all. Marked in the database, so that every worker and machine answers the same;
        a certificate marked already keeps its earlier moment. Returns the serials marked; one audit entry."""
        if not (serials or profile or everything):
            raise ValueError("name serials, a profile, or everything")
        now = utcnow()
        cert = CertificateRecord
        query = select(cert.serial).where(cert.status == CertStatus.VALID, cert.not_after > now,
                                          cert.renew_after.is_(None))
        if serials:
            query = query.where(cert.serial.in_(list(serials)))
        if profile:
            query = query.where(cert.profile == profile)
        with self.write() as session:
            marked = sorted(session.scalars(query))
            if marked:
                session.execute(update(cert).where(cert.serial.in_(marked)).values(renew_after=now))
            self._append_audit(session, actor, "renew-early", {
                "serials": marked, "profile": profile, "all": everything, "renew_after": now.isoformat()})
        return marked

    def renew_early_due(self, serial: str, now: datetime | None = None) -> bool:
        """Whether an operator asked that this certificate be renewed now (`vpnca renew-early`)."""
        with self.read() as session:
            renew_after = session.scalar(select(CertificateRecord.renew_after)
                                         .where(CertificateRecord.serial == serial))
        return renew_after is not None and renew_after <= (now or utcnow())

    # -- CA certificates ----------------------------------------------------------------------

    def add_ca_certificate(
        self, *, role: str, ca_name: str, serial: str, der: bytes, key_label: str | None,
        actor: str, details: dict[str, Any],
    ) -> None:
        with self.write() as session:
            session.add(CaCertificate(
                role=role, ca_name=ca_name, serial=serial, der=der, key_label=key_label,
                created_at=utcnow(),
            ))
            self._append_audit(session, actor, f"ca-{role}", details)

    # -- enrollment tokens ----------------------------------------------------------------------

    def add_enrollment_token(self, token: EnrollmentToken) -> None:
        with self.write() as session:
            session.add(token)
            self._append_audit(session, token.created_by, "token-create", {
                "token_id": token.token_id, "identities": [[i.kind, i.value] for i in token.identities],
                "profile": token.profile, "protocol": token.protocol,
                "expires_at": token.expires_at.isoformat(),
            })

    def get_enrollment_token(self, token_id: str) -> EnrollmentToken | None:
        with self._reachable():
            raw = self.engine.raw_connection()  # a prepared read: on every token-authenticated enrollment
            try:
                cursor = raw.cursor()
                row = self._hot.token.run(cursor, token_id_p=token_id).fetchone()
                names = [d[0] for d in cursor.description]
                raw.commit()  # ends the read transaction PostgreSQL opened
            finally:
                raw.close()
        if row is None:
            return None
        convert = self._hot.token_results
        return EnrollmentToken(**{name: convert[name](value) if convert[name] else value  # type: ignore[misc]
                                  for name, value in zip(names, row, strict=True)})

    # -- pending requests ----------------------------------------------------------------------

    def pending_request(self, request_id: str) -> PendingRequest | None:
        with self.read() as session:
            return session.get(PendingRequest, request_id)

    def add_pending_request(self, pending: PendingRequest) -> PendingRequest:
        """Insert the pending request, or return the one already filed for the same CSR."""
        try:
            with self.write() as session:
                session.add(pending)
                self._append_audit(session, pending.requester, "request-pending", {
                    "request_id": pending.request_id, "profile": pending.profile,
                    "identities": [[i.kind, i.value] for i in pending.identities],
                    "protocol": pending.protocol,
                })
            return pending
        except IntegrityError:
            existing = self.pending_request(pending.request_id)
            assert existing is not None
            return existing

    def pending_by_transaction(self, transaction_id: str) -> PendingRequest | None:
        with self.read() as session:
            return session.scalars(select(PendingRequest)
                                   .where(PendingRequest.transaction_id == transaction_id)
                                   .order_by(PendingRequest.created_at.desc()).limit(1)).first()

    def list_pending(self) -> list[PendingRequest]:
        with self.read() as session:
            return list(session.scalars(
                select(PendingRequest).where(PendingRequest.status == "pending")
                .order_by(PendingRequest.created_at)
            ))

    def decide_pending(self, request_id: str, *, approve: bool, actor: str) -> PendingRequest:
        with self.write() as session:
            pending = session.get(PendingRequest, request_id)
            if pending is None:
                raise NotFound(f"no pending request {request_id}")
            if pending.status != "pending":
                raise Conflict(f"request {request_id} is already {pending.status}")
            pending.status = "approved" if approve else "rejected"
            pending.decided_by = actor
            self._append_audit(session, actor, "approve" if approve else "reject",
                               {"request_id": request_id})
            return pending

    def mark_pending_issued(self, request_id: str, serial: str) -> None:
        with self.write() as session:
            pending = session.get(PendingRequest, request_id)
            if pending is not None:
                pending.status = "issued"
                pending.serial = serial

    # -- CRLs ----------------------------------------------------------------------------------

    def revoked_entries(self, issuer: str, *, expired_since: datetime | None = None
                        ) -> list[tuple[str, datetime, str | None, datetime | None]]:
        """(serial, revoked_at, reason, invalidity_date) of every revoked or held certificate, leaving
        out those that expired before `expired_since`."""
        query = (select(CertificateRecord.serial, CertificateRecord.revoked_at,
                        CertificateRecord.revocation_reason, CertificateRecord.invalidity_date)
                 .where(CertificateRecord.issuer == issuer, CertificateRecord.status == CertStatus.REVOKED))
        if expired_since is not None:
            query = query.where(CertificateRecord.not_after >= expired_since)
        with self.read() as session:
            return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    def released_since(self, issuer: str, since: datetime) -> list[tuple[str, datetime]]:
        query = (select(CertificateRecord.serial, CertificateRecord.hold_released_at)
                 .where(CertificateRecord.issuer == issuer, CertificateRecord.status == CertStatus.VALID,
                        CertificateRecord.hold_released_at > since))
        with self.read() as session:
            return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]

    def next_crl_number(self) -> int:
        with self.read() as session:
            current = session.scalar(select(func.max(CrlRecord.number)))
        return (current or 0) + 1

    def add_crl(self, record: CrlRecord, *, actor: str) -> None:
        """Record a signed CRL; CrlNumberTaken when another publisher recorded that number first."""
        try:
            with self.write() as session:
                session.add(record)
                session.flush()
                self._append_audit(session, actor, "crl", {
                    "number": record.number, "delta_base": record.delta_base, "entries": record.entries,
                    "this_update": record.this_update.isoformat(),
                    "next_update": record.next_update.isoformat()})
        except IntegrityError as exc:
            raise CrlNumberTaken(f"CRL number {record.number} is already recorded") from exc

    # -- OCSP ------------------------------------------------------------------------------------

    def ocsp_answer(self, serial: str, hash_algorithm: str) -> tuple[bytes, datetime] | None:
        """The pre-signed answer (DER, nextUpdate) for one serial and CertID hash, if there is one."""
        table = tables.ocsp_responses
        with self._reachable(), self.engine.connect() as conn:
            row = conn.execute(select(table.c.der, table.c.next_update).where(
                table.c.serial == serial, table.c.hash_algorithm == hash_algorithm)).first()
        return None if row is None else (bytes(row[0]), row[1])

    def ocsp_answers_since(self, since: datetime) -> list[tuple[str, str, bytes, datetime]]:
        """(serial, hash algorithm, DER, nextUpdate) of every answer signed at or after `since`."""
        table = tables.ocsp_responses
        with self._reachable(), self.engine.connect() as conn:
            return [(serial, algorithm, bytes(der), next_update) for serial, algorithm, der, next_update in
                    conn.execute(select(table.c.serial, table.c.hash_algorithm, table.c.der,
                                        table.c.next_update)
                                 .where(table.c.this_update >= since))]

    def change_watch(self) -> ChangeWatch | None:
        """On SQLite, a cheap way to see that another connection committed; None elsewhere (poll)."""
        return ChangeWatch(self) if self.engine.dialect.name == "sqlite" else None

    def save_ocsp_responses(self, records: list[OcspResponseRecord]) -> None:
        """Replace the stored answers for these (serial, hash) pairs in one transaction."""
        if not records:
            return
        latest = {(r.serial, r.hash_algorithm): r for r in records}
        serials = sorted({serial for serial, _ in latest})
        with self.write() as session:
            for start in range(0, len(serials), 500):
                session.execute(delete(OcspResponseRecord).where(
                    OcspResponseRecord.serial.in_(serials[start:start + 500])))
            session.execute(insert(OcspResponseRecord), [
                {"serial": r.serial, "hash_algorithm": r.hash_algorithm, "cert_status": r.cert_status,
                 "this_update": r.this_update, "next_update": r.next_update, "der": r.der}
                for r in latest.values()])

    @staticmethod
    def _ocsp_stale(issuer: str, refresh_before: datetime) -> Any:
        """Certificates whose pre-signed answer is missing, due for refresh, or tells another status
        (a revocation or a hold release not yet re-signed, e.g. when the token was away)."""
        fresh = (select(OcspResponseRecord.serial)
                 .join(CertificateRecord, CertificateRecord.serial == OcspResponseRecord.serial)
                 .where(OcspResponseRecord.hash_algorithm == "sha256",
                        OcspResponseRecord.next_update >= refresh_before,
                        ((OcspResponseRecord.cert_status == "good")
                         == (CertificateRecord.status == CertStatus.VALID))))
        return (CertificateRecord.issuer == issuer,
                CertificateRecord.status.in_([CertStatus.VALID, CertStatus.REVOKED]),
                CertificateRecord.serial.not_in(fresh))

    def count_ocsp_backlog(self, issuer: str, refresh_before: datetime) -> int:
        with self.read() as session:
            return int(session.scalar(select(func.count()).select_from(CertificateRecord)
                                      .where(*self._ocsp_stale(issuer, refresh_before))) or 0)

    # -- scheduler ---------------------------------------------------------------------------------

    def job_run(self, job: str) -> JobRun | None:
        with self.read() as session:
            return session.get(JobRun, job)

    def record_job(self, job: str, *, ok: bool, message: str, next_attempt: datetime | None,
                   audit: bool = True) -> JobRun:
        """Keep the job's latest outcome; runs that did something, and failures, are audited too."""
        with self.write() as session:
            run = session.get(JobRun, job) or JobRun(job=job, failures=0)
            run.last_run, run.ok, run.message = utcnow(), ok, message[:1000]
            run.failures = 0 if ok else (run.failures or 0) + 1
            run.next_attempt = next_attempt
            session.add(run)
            if audit or not ok:
                self._append_audit(session, "scheduler", "job" if ok else "job-failed",
                                   {"job": job, "ok": ok, "message": message[:300]})
            return run
