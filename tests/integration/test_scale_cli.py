"""The operator's commands on a large store: `vpnca list` and `vpnca report expiring` stream (first row at
once, bounded memory, keyset pages, filters, a closed pipe ends quietly), `vpnca audit export` writes the
pack of a period, `vpnca status` stays fast. The store is filled with synthetic rows (no signing):
VPNCA_SCALE_ROWS of them, 200,000 by default (about 2 minutes in all)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from ocsp.presign import Share
from ocsp.service import load_ocsp_service
from tests.conftest import CaHome, make_ca_home
from tests.helpers import run
from vpnca.audit import canonical_details, entry_hash
from vpnca.identities import IkeIdentity
from vpnca.store import Store, tables

VPNCA = [sys.executable, "-m", "vpnca.cli"]
ROWS = int(os.environ.get("VPNCA_SCALE_ROWS", "200000"))
LIFETIME = timedelta(days=365)
SPAN = timedelta(days=400)  # issuance times spread over the last 400 days


def fill(store: Store, issuer: str, count: int, *, now: datetime, audit_entries: int = 0,
         batch: int = 20_000) -> None:
    """`count` certificate rows: every 10th revoked (every 20th on hold), every 50th (from the 8th) a
    gateway, issued evenly over SPAN before `now`, identities dev{i}.example.com; and `audit_entries`
    issue entries appended to the audit chain (hashes computed, so the chain stays intact)."""
    table = tables.certificates
    rows: list[dict[str, Any]] = []
    with store.write_core() as conn:
        for i in range(count):
            created = now - SPAN + SPAN * i / count
            revoked = i % 10 == 0
            rows.append({
                "serial": format(secrets.randbits(127) | (1 << 126), "x"), "issuer": issuer,
                "profile": "gateway" if i % 50 == 7 else "device", "subject": f"CN=dev{i}.example.com",
                "identities": (IkeIdentity("fqdn", f"dev{i}.example.com"),),
                "status": "revoked" if revoked else "valid", "not_before": created,
                "not_after": created + LIFETIME, "requester": "scale", "protocol": "est",
                "created_at": created, "revoked_at": created + timedelta(days=1) if revoked else None,
                "revocation_reason": (None if not revoked else
                                      "certificateHold" if i % 20 == 0 else "keyCompromise"),
            })
            if len(rows) == batch:
                conn.execute(insert(table), rows)
                rows = []
        if rows:
            conn.execute(insert(table), rows)
    if audit_entries:
        append_audit(store, audit_entries, batch=batch)


def append_audit(store: Store, count: int, *, batch: int = 20_000) -> None:
    seq, prev = store.audit_head()
    table = tables.audit_log
    rows: list[dict[str, Any]] = []
    with store.write_core() as conn:
        for _ in range(count):
            seq += 1
            created_at = datetime.now(UTC).isoformat()
            details = canonical_details({"serial": format(secrets.randbits(127), "x"), "profile": "device"})
            digest = entry_hash(prev, seq, created_at, "scale", "issue", details)
            rows.append({"seq": seq, "created_at": created_at, "actor": "scale", "action": "issue",
                         "details": details, "prev_hash": prev, "entry_hash": digest})
            prev = digest
            if len(rows) == batch:
                conn.execute(insert(table), rows)
                rows = []
        if rows:
            conn.execute(insert(table), rows)


@dataclass
class Big:
    ca: CaHome
    now: datetime


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, softhsm: Any) -> Iterator[Big]:
    ca = make_ca_home(tmp_path_factory.mktemp("scale") / "home", softhsm)
    now = datetime.now(UTC)
    fill(ca.store, ca.settings.ca.name, ROWS, now=now)
    yield Big(ca, now)
    ca.store.dispose()


def vpnca(ca: CaHome, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*VPNCA, *args], env=ca.env, check=check)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def measured(ca: CaHome, *args: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of `vpnca ARGS > /dev/null`, through GNU time: the rusage of a
    child forked from this (large) process would count the memory it had before exec."""
    time_tool = shutil.which("time", path="/usr/bin:/bin")
    assert time_tool, "GNU time (/usr/bin/time) is needed to measure memory"
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.monotonic()
        result = subprocess.run([time_tool, "-f", "%M", "-o", report.name, *VPNCA, *args], env=ca.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        seconds = time.monotonic() - start
        assert result.returncode == 0, result.stderr
        return seconds, int(report.read().split()[-1])


def peak_rss_kb(ca: CaHome, *args: str) -> int:
    return measured(ca, *args)[1]


def first_bytes(ca: CaHome, *args: str, size: int = 1000) -> tuple[bytes, float, int, str]:
    """Read `size` bytes of the command's output, then close the pipe as `head -c` does: the bytes, the
    seconds to them, the exit status and stderr."""
    start = time.monotonic()
    process = subprocess.Popen([*VPNCA, *args], env=ca.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    data = b""
    while len(data) < size:
        chunk = os.read(process.stdout.fileno(), size - len(data))
        if not chunk:
            break
        data += chunk
    elapsed = time.monotonic() - start
    process.stdout.close()
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    return data, elapsed, process.returncode, stderr


def test_list_json_streams_its_first_bytes_at_once_and_a_closed_pipe_ends_quietly(big: Big) -> None:
    data, elapsed, status, stderr = first_bytes(big.ca, "list", "--status", "valid", "--json")
    assert len(data) == 1000 and elapsed < 60, elapsed  # a functional deadline (the whole output: minutes)
    first = json.loads(data.split(b"\n")[0])
    assert first["status"] == "valid" and first["identities"][0].startswith("dev")
    assert status == 0 and stderr == "", stderr  # no BrokenPipeError traceback
    data, _, status, stderr = first_bytes(big.ca, "report", "expiring", "--within", "30d", "--json")
    assert status == 0 and stderr == "" and len(data) == 1000


def test_memory_stays_bounded_whatever_the_number_of_rows(big: Big) -> None:
    everything = peak_rss_kb(big.ca, "list", "--json")
    page = peak_rss_kb(big.ca, "list", "--json", "--limit", "100")
    # all rows cost the same memory as 100 rows (not the ~1 GB a list of every row would take)
    assert everything < page + 40_000 and everything < 250_000, (everything, page)


def test_pages_continue_after_the_last_serial_of_the_previous_one(big: Big) -> None:
    ten = lines(vpnca(big.ca, "list", "--json", "--limit", "10").stdout)
    first = lines(vpnca(big.ca, "list", "--json", "--limit", "5").stdout)
    second = lines(vpnca(big.ca, "list", "--json", "--limit", "5", "--after", first[-1]["serial"]).stdout)
    assert [r["serial"] for r in first + second] == [r["serial"] for r in ten]
    assert [r["serial"] for r in ten] == sorted(r["serial"] for r in ten)
    table = vpnca(big.ca, "list", "--limit", "3").stdout.splitlines()
    assert table[0].startswith("SERIAL") and len(table) == 4 and ten[0]["serial"] in table[1]


def test_filters(big: Big) -> None:
    found = lines(vpnca(big.ca, "list", "--json", "--identity", "DEV1234.example").stdout)
    assert [r["identities"] for r in found] == [["dev1234.example.com"]]
    gateways = lines(vpnca(big.ca, "list", "--json", "--profile", "gateway", "--limit", "200").stdout)
    assert len(gateways) == 200 and {r["profile"] for r in gateways} == {"gateway"}
    held = lines(vpnca(big.ca, "list", "--json", "--status", "on-hold", "--limit", "50").stdout)
    assert len(held) == 50 and {r["status"] for r in held} == {"on-hold"}
    revoked = lines(vpnca(big.ca, "list", "--json", "--status", "revoked", "--limit", "200").stdout)
    assert {r["status"] for r in revoked} == {"revoked", "on-hold"}
    start, end = big.now + timedelta(days=10), big.now + timedelta(days=12)
    window = lines(vpnca(big.ca, "list", "--json", "--expires-after", start.date().isoformat(),
                         "--expires-before", end.date().isoformat()).stdout)
    day_start = datetime.fromisoformat(start.date().isoformat()).replace(tzinfo=UTC)
    assert window and all(day_start <= datetime.fromisoformat(r["not_after"]) < day_start + timedelta(days=2)
                          for r in window)
    assert abs(len(window) - 2 * ROWS / 400) < ROWS / 400  # two days of ROWS issued over 400 days
    since = big.now - timedelta(days=2)
    recent = lines(vpnca(big.ca, "list", "--json", "--issued-since", since.isoformat()).stdout)
    assert recent and all(datetime.fromisoformat(r["created_at"]) >= since for r in recent)
    assert vpnca(big.ca, "list", "--expires-before", "soon", check=False).returncode == 1


def test_report_expiring_streams_the_soonest_first_and_pages(big: Big) -> None:
    rows = lines(vpnca(big.ca, "report", "expiring", "--within", "1d", "--json").stdout)
    assert rows and {r["status"] for r in rows} == {"valid"}
    ends = [datetime.fromisoformat(r["not_after"]) for r in rows]
    assert ends == sorted(ends) and all(big.now <= e <= datetime.now(UTC) + timedelta(days=1) for e in ends)
    page = lines(vpnca(big.ca, "report", "expiring", "--within", "1d", "--json", "--limit", "3",
                       "--after", rows[2]["serial"]).stdout)
    assert [r["serial"] for r in page] == [r["serial"] for r in rows[3:6]]
    gateways = lines(vpnca(big.ca, "report", "expiring", "--within", "30d", "--json", "--profile",
                           "gateway").stdout)
    assert gateways and {r["profile"] for r in gateways} == {"gateway"}


def test_status_counts_on_indexes(big: Big) -> None:
    """The counts and the backlog of `vpnca status` (its time: tests/bench/test_bench_scale.py)."""
    from vpnca.cli import status_report

    report = status_report(big.ca.settings, big.ca.store)
    assert sum(report["certificates"].values()) == ROWS and report["audit"]["ok"]
    assert report["ocsp_presign_backlog"] == ROWS  # nothing pre-signed: every valid and revoked one
    status = json.loads(vpnca(big.ca, "status", "--json").stdout)
    assert status["certificates"]["valid"] == ROWS - ROWS // 10 and status["ocsp_presign_backlog"] == ROWS
    counts = ("SELECT status, count(*) FROM certificates GROUP BY status",
              "SELECT count(*) FROM certificates WHERE issuer = 'x' AND status IN ('valid', 'revoked')",
              "SELECT count(*) FROM ocsp_responses WHERE hash_algorithm = 'sha256' AND next_update >= 0")
    with big.ca.store.engine.connect() as conn:  # counted on the indexes, the table's rows never read
        plans = [" ".join(str(step[-1]) for step in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
                 for query in counts]
    assert all("COVERING INDEX" in plan for plan in plans), plans


def test_audit_export_of_a_past_period_holds_only_its_certificates(big: Big, tmp_path: Path) -> None:
    since, until = big.now - timedelta(days=20), big.now - timedelta(days=19)
    pack = tmp_path / "pack"
    vpnca(big.ca, "audit", "export", str(pack), "--since", since.isoformat(), "--until", until.isoformat())
    rows = lines((pack / "register/certificates.jsonl").read_text())
    csv_lines = (pack / "register/certificates.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    assert rows and all(
        since <= datetime.fromisoformat(r["created_at"]) < until
        or (r["revoked_at"] and since <= datetime.fromisoformat(r["revoked_at"]) < until)
        or (datetime.fromisoformat(r["not_after"]) >= since
            and datetime.fromisoformat(r["not_before"]) < until
            and (not r["revoked_at"] or datetime.fromisoformat(r["revoked_at"]) >= since))
        for r in rows)
    # issued before the period and expired before it, or issued after it: not in the register
    assert all(datetime.fromisoformat(r["created_at"]) < until for r in rows)
    assert all(datetime.fromisoformat(r["not_after"]) >= since for r in rows)
    # issued 385 to 19 days ago (valid at some moment of the day), less the tenth revoked before it began
    expected = ROWS * (385 - 19) / 400 * 0.9
    assert abs(len(rows) - expected) < ROWS * 0.02, (len(rows), expected)
    verification = json.loads((pack / "audit/verification.json").read_text())
    assert verification["ok"] and verification["entries"] == 0  # nothing was audited in that period
    out = vpnca(big.ca, "audit", "verify", "--pack", str(pack))
    assert out.returncode == 0 and "intact" in out.stdout


def test_audit_export_holds_the_chain_segment_of_its_period_and_verifies(big: Big, tmp_path: Path) -> None:
    head_before, _ = big.ca.store.audit_head()
    time.sleep(1.1)
    since = datetime.now(UTC)
    time.sleep(0.1)
    append_audit(big.ca.store, 50)
    pack = tmp_path / "pack"
    vpnca(big.ca, "audit", "export", str(pack), "--since", since.isoformat(), "--gzip")
    assert (pack / "register/certificates.csv.gz").exists() and (pack / "audit/chain.jsonl.gz").exists()
    verification = json.loads((pack / "audit/verification.json").read_text())
    assert verification["ok"] and verification["segment"]["first_seq"] == head_before + 1
    assert verification["entries"] >= 50
    out = vpnca(big.ca, "audit", "verify", "--pack", str(pack))
    assert out.returncode == 0 and "intact" in out.stdout, out.stdout
    # a segment that is not the live chain's is caught against the database
    import gzip

    chain = pack / "audit/chain.jsonl.gz"
    entries = gzip.decompress(chain.read_bytes()).decode().splitlines()
    chain.write_bytes(gzip.compress("\n".join(entries[1:]).encode() + b"\n"))
    broken = vpnca(big.ca, "audit", "verify", "--pack", str(pack), check=False)
    assert broken.returncode == 1 and "audit/chain.jsonl.gz" in broken.stdout


def test_the_same_streaming_on_sqlite_and_postgresql(any_ca_home: CaHome, tmp_path: Path) -> None:
    ca = any_ca_home
    fill(ca.store, ca.settings.ca.name, 3000, now=datetime.now(UTC), audit_entries=100, batch=1000)
    rows = lines(vpnca(ca, "list", "--json").stdout)
    assert len(rows) == 3000 and [r["serial"] for r in rows] == sorted(r["serial"] for r in rows)
    page = lines(vpnca(ca, "list", "--json", "--limit", "10", "--after", rows[99]["serial"]).stdout)
    assert page == rows[100:110]
    held = lines(vpnca(ca, "list", "--json", "--status", "on-hold").stdout)
    assert len(held) == 150 and {r["status"] for r in held} == {"on-hold"}
    assert [r["serial"] for r in lines(vpnca(ca, "list", "--json", "--identity", "dev42.").stdout)] == \
        [r["serial"] for r in rows if r["identities"] == ["dev42.example.com"]]
    expiring = lines(vpnca(ca, "report", "expiring", "--within", "30d", "--json").stdout)
    assert expiring and [r["not_after"] for r in expiring] == sorted(r["not_after"] for r in expiring)
    backlog = ca.store.count_ocsp_backlog(ca.settings.ca.name, datetime.now(UTC))
    status = json.loads(vpnca(ca, "status", "--json").stdout)
    assert status["audit"]["ok"] and status["ocsp_presign_backlog"] == backlog
    # pages of 400 certificates: 800 answers, written as two INSERT ... ON CONFLICT statements (500 + 300)
    service = load_ocsp_service(ca.settings, ca.store)
    assert sum(service.presign_backlog(Share(index, 2), batch=400) for index in range(2)) == backlog
    assert ca.store.count_ocsp_backlog(ca.settings.ca.name, datetime.now(UTC)) == 0
    answers = tables.ocsp_responses
    with ca.store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(answers)) == 2 * backlog  # SHA-1 and SHA-256
    pack = tmp_path / "pack"
    vpnca(ca, "audit", "export", str(pack), "--gzip")
    assert vpnca(ca, "audit", "verify", "--pack", str(pack)).returncode == 0


def every_page(ca: CaHome, *command: str, limit: int) -> list[list[dict[str, Any]]]:
    """`vpnca COMMAND --json --limit N`, then `--after` the last serial of each page until one is empty."""
    pages = [lines(vpnca(ca, *command, "--json", "--limit", str(limit)).stdout)]
    while pages[-1]:
        pages.append(lines(vpnca(ca, *command, "--json", "--limit", str(limit),
                                 "--after", pages[-1][-1]["serial"]).stdout))
    return pages[:-1]


def test_paging_returns_every_row_exactly_once_on_sqlite_and_postgresql(any_ca_home: CaHome) -> None:
    ca = any_ca_home
    fill(ca.store, ca.settings.ca.name, 2500, now=datetime.now(UTC), batch=1000)
    everything = [r["serial"] for r in lines(vpnca(ca, "list", "--json").stdout)]
    pages = every_page(ca, "list", limit=700)
    assert [len(p) for p in pages] == [700, 700, 700, 400]
    assert [r["serial"] for p in pages for r in p] == everything and len(set(everything)) == 2500
    expiring = lines(vpnca(ca, "report", "expiring", "--within", "60d", "--json").stdout)
    by_expiry = every_page(ca, "report", "expiring", "--within", "60d", limit=len(expiring) // 3 + 1)
    assert len(by_expiry) == 3
    assert [r["serial"] for p in by_expiry for r in p] == [r["serial"] for r in expiring]
    assert len({r["serial"] for r in expiring}) == len(expiring) > 0


def in_period(row: dict[str, Any], since: datetime, until: datetime) -> bool:
    """The register's rule: issued or revoked in [since, until), or valid at some moment of it."""
    def moment(key: str) -> datetime | None:
        return datetime.fromisoformat(row[key]).replace(tzinfo=UTC) if row[key] else None

    created, revoked = moment("created_at"), moment("revoked_at")
    not_before, not_after = moment("not_before"), moment("not_after")
    assert created and not_before and not_after
    return (since <= created < until or (revoked is not None and since <= revoked < until)
            or (not_after >= since and not_before < until and (revoked is None or revoked >= since)))


def test_the_exported_period_holds_exactly_its_certificates_and_a_tampered_pack_fails(
        any_ca_home: CaHome, tmp_path: Path) -> None:
    ca = any_ca_home
    now = datetime.now(UTC)
    fill(ca.store, ca.settings.ca.name, 4000, now=now, batch=1000)  # issued over 400 days, 365-day lifetimes
    since, until = now - timedelta(days=390), now - timedelta(days=370)
    pack = tmp_path / "pack"
    vpnca(ca, "audit", "export", str(pack), "--since", since.isoformat(), "--until", until.isoformat())
    exported = {r["serial"] for r in lines((pack / "register/certificates.jsonl").read_text())}
    everything = lines(vpnca(ca, "list", "--json").stdout)
    expected = {r["serial"] for r in everything if in_period(r, since, until)}
    assert exported == expected and 0 < len(expected) < len(everything)
    assert vpnca(ca, "audit", "verify", "--pack", str(pack)).returncode == 0
    register = pack / "register/certificates.jsonl"
    register.write_text(register.read_text().replace('"revoked"', '"valid"', 1))
    tampered = vpnca(ca, "audit", "verify", "--pack", str(pack), check=False)
    assert tampered.returncode == 1 and "register/certificates.jsonl" in tampered.stdout


def test_presigning_shares_sign_every_certificate_once_until_drained(any_ca_home: CaHome) -> None:
    from ocsp.presign import PresignStats, Share
    from ocsp.service import load_ocsp_service
    from vpnca.store.ocsp_backlog import count_without_fresh_answer

    ca = any_ca_home
    fill(ca.store, ca.settings.ca.name, 900, now=datetime.now(UTC), batch=1000)
    service = load_ocsp_service(ca.settings, ca.store)
    refresh_before = datetime.now(UTC) + ca.settings.ocsp.refresh_before
    assert count_without_fresh_answer(ca.store, ca.settings.ca.name, refresh_before) == 900
    stats = [PresignStats() for _ in range(3)]
    done = [service.presign_backlog(Share(i, 3), batch=50, stats=stats[i]) for i in range(3)]
    assert sum(done) == 900 and all(200 < d < 400 for d in done), done
    assert all(s.passes == 2 and s.responses == 2 * d for s, d in zip(stats, done, strict=True))  # drained
    assert count_without_fresh_answer(ca.store, ca.settings.ca.name, refresh_before) == 0
    assert ca.store.count_ocsp_backlog(ca.settings.ca.name, refresh_before) == 0
    with ca.store.engine.connect() as conn:
        answers: dict[str, int] = dict(conn.exec_driver_sql(
            "SELECT o.cert_status, count(*) FROM ocsp_responses o JOIN certificates c ON c.serial = o.serial "
            "WHERE (o.cert_status = 'good') = (c.status = 'valid') GROUP BY o.cert_status").all())
    assert answers == {"good": 2 * 810, "revoked": 2 * 90}  # every 10th revoked, both CertID hashes
    assert service.presign_backlog(Share(1, 3)) == 0
    # a revocation the answers do not tell yet is in the backlog of the share its serial falls in
    revoked = lines(vpnca(ca, "list", "--json", "--status", "valid", "--limit", "1").stdout)[0]["serial"]
    ca.store.revoke(revoked, "keyCompromise", actor="test", revoked_at=datetime.now(UTC))
    owner = next(i for i in range(3) if revoked[-2:] in (Share(i, 3).suffixes() or []))
    assert service.presign_backlog(Share((owner + 1) % 3, 3)) == 0
    assert service.presign_backlog(Share(owner, 3)) == 1


def test_a_presigning_run_stopped_by_its_limit_goes_on_where_it_stopped(ca_home: CaHome) -> None:
    from ocsp.presign import PresignStats
    from ocsp.service import load_ocsp_service

    ca = ca_home
    fill(ca.store, ca.settings.ca.name, 600, now=datetime.now(UTC), batch=1000)  # 540 valid, 60 revoked
    service = load_ocsp_service(ca.settings, ca.store)
    valid = [r.serial for r in ca.store.iter_certificates(status="valid")]  # in serial order, as passes go

    def answered() -> list[str]:
        with ca.store.engine.connect() as conn:
            return [serial for (serial,) in conn.exec_driver_sql(
                "SELECT serial FROM ocsp_responses WHERE hash_algorithm = 'sha256' ORDER BY serial")]

    def drop_answer(serial: str) -> None:
        with ca.store.write_core() as conn:
            conn.exec_driver_sql("DELETE FROM ocsp_responses WHERE serial = ?", (serial,))

    assert service.presign_backlog(batch=100, limit=200) == 200 and answered() == valid[:200]
    drop_answer(valid[0])  # behind where the run stopped: the next limited run does not read it again
    assert service.presign_backlog(batch=100, limit=200) == 200 and answered() == valid[1:400]
    stats = PresignStats()  # unlimited: on from the 400th, then a pass from the start finds the dropped one
    assert service.presign_backlog(batch=100, stats=stats) == 140 + 60 + 1 and stats.passes == 3
    assert answered() == sorted(valid + [r.serial for r in ca.store.iter_certificates(status="revoked")])


@pytest.mark.parametrize("command", [("status", "--json"), ("list", "--json", "--limit", "5"),
                                     ("report", "expiring", "--within", "30d"), ("audit", "verify")])
def test_the_read_only_commands_never_load_the_orm(ca_home: CaHome, command: tuple[str, ...]) -> None:
    """They read through the Core `Database` (vpnca/store/database.py): loading the ORM and mapping its
    classes was a third of their start-up time."""
    fill(ca_home.store, ca_home.settings.ca.name, 20, now=datetime.now(UTC), batch=20)
    out = run([sys.executable, "-X", "importtime", "-m", "vpnca.cli", *command], env=ca_home.env)
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert {"sqlalchemy", "vpnca.store.tables"} <= imported  # (importtime leaves out importlib's imports)
    assert not {m for m in imported if m.startswith("sqlalchemy.orm")}
