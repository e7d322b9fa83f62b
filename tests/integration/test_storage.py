"""Storage, revocation, concurrency and the audit chain on SQLite and on a real PostgreSQL."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from tests.conftest import CaHome
from vpnca.audit import verify_chain
from vpnca.authority import IssuedCertificate, IssueRequest
from vpnca.errors import Conflict, NotFound
from vpnca.identities import IkeIdentity
from vpnca.store import CertStatus


def issue(ca: CaHome, name: str, profile: str = "device") -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return ca.authority.issue(IssueRequest(profile=profile, identities=(IkeIdentity.parse(name),),
                                           public_key=key.public_key(), requester="test"))


def test_eight_threads_issue_at_once_through_the_token(any_ca_home: CaHome) -> None:
    names = [f"dev{i}.example.com" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(lambda n: issue(any_ca_home, n), names))
    serials = {i.serial for i in issued}
    assert len(serials) == 8
    for item in issued:
        item.certificate.verify_directly_issued_by(any_ca_home.hierarchy.sub)
        record = any_ca_home.store.get_certificate(item.serial)
        assert record is not None and record.status == CertStatus.VALID and record.der == item.der
    assert any_ca_home.store.count_by_status() == {"valid": 8}
    assert verify_chain(any_ca_home.store.audit_entries()).ok


def test_serials_are_unique_by_database_constraint(any_ca_home: CaHome) -> None:
    serial = issue(any_ca_home, "a.example.com").serial
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), any_ca_home.store.write() as session:
        session.execute(text(
            "INSERT INTO certificates (serial, issuer, profile, subject, identities, status, not_before,"
            " not_after, requester, protocol, created_at) VALUES (:s, 'x', 'device', 'CN=x', '[]', 'valid',"
            " :t, :t, 'x', 'x', :t)"), {"s": serial, "t": datetime.now(UTC).replace(tzinfo=None)})


def test_revocation_hold_and_release(any_ca_home: CaHome) -> None:
    ca = any_ca_home
    serial = issue(ca, "r.example.com").serial
    held = ca.authority.revoke(serial, "certificateHold", actor="op")
    assert held.status == CertStatus.REVOKED and held.revocation_reason == "certificateHold"
    with pytest.raises(Conflict, match="already on hold"):
        ca.authority.revoke(serial, "certificateHold", actor="op")
    released = ca.authority.release_hold(serial, actor="op")
    assert released.status == CertStatus.VALID and released.revoked_at is None
    when = datetime(2026, 1, 2, tzinfo=UTC)
    revoked = ca.authority.revoke(serial, "keyCompromise", actor="op", invalidity_date=when)
    assert revoked.revocation_reason == "keyCompromise" and revoked.revoked_at is not None
    stored = ca.store.get_certificate(serial)
    assert stored is not None and stored.invalidity_date == when
    with pytest.raises(Conflict, match="already revoked"):
        ca.authority.revoke(serial, "superseded", actor="op")
    with pytest.raises(Conflict, match="not on hold"):
        ca.authority.release_hold(serial, actor="op")
    with pytest.raises(NotFound):
        ca.authority.revoke("abcdef", "keyCompromise", actor="op")
    actions = [e.action for e in ca.store.audit_entries()]
    assert actions[-3:] == ["revoke", "release-hold", "revoke"]


def test_interrupted_issuance_leaves_a_row(any_ca_home: CaHome, monkeypatch: pytest.MonkeyPatch) -> None:
    class Crash(BaseException):
        """Stands for the process dying between reserving the serial and signing."""

    def crash(*_args: object, **_kwargs: object) -> x509.Certificate:
        raise Crash

    monkeypatch.setattr(any_ca_home.authority, "_sign", crash)
    with pytest.raises(Crash):
        issue(any_ca_home, "crash.example.com")
    stuck = any_ca_home.store.list_certificates(status=CertStatus.ISSUING)
    assert len(stuck) == 1 and stuck[0].subject == "CN=crash.example.com"


def test_a_signing_failure_marks_the_row_failed(any_ca_home: CaHome, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> x509.Certificate:
        raise RuntimeError("token went away")

    monkeypatch.setattr(any_ca_home.authority, "_sign", broken)
    with pytest.raises(RuntimeError):
        issue(any_ca_home, "fail.example.com")
    failed = any_ca_home.store.list_certificates(status=CertStatus.FAILED)
    assert len(failed) == 1 and "token went away" in (failed[0].error or "")


@pytest.mark.parametrize("tamper", ["edit", "remove", "reorder"])
def test_tampering_with_the_audit_chain_is_detected(any_ca_home: CaHome, tamper: str) -> None:
    for i in range(3):
        issue(any_ca_home, f"t{i}.example.com")
    entries = any_ca_home.store.audit_entries()
    assert verify_chain(entries).ok
    target = next(e for e in entries if e.action == "issue")
    with any_ca_home.store.write() as session:
        if tamper == "edit":
            session.execute(text("UPDATE audit_log SET details = :d WHERE seq = :s"),
                            {"d": target.details.replace('"profile":"device"', '"profile":"gateway"'),
                             "s": target.seq})
        elif tamper == "remove":
            session.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": target.seq})
        else:
            other = entries[target.seq]  # the entry after the target
            for entry, seq in ((target, -1), (other, target.seq), (target, other.seq)):
                session.execute(text("UPDATE audit_log SET seq = :new WHERE entry_hash = :h"),
                                {"new": seq, "h": entry.entry_hash})
    result = verify_chain(any_ca_home.store.audit_entries())
    assert not result.ok
    named = {p.seq for p in result.problems}
    expected = {"edit": {target.seq}, "remove": {target.seq + 1}, "reorder": {target.seq, target.seq + 1}}
    assert expected[tamper] <= named
