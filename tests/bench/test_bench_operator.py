"""The operator's commands at 1,000,000 certificates (VPNCA_BENCH_OPERATOR_ROWS) on SQLite: time to the
first 1,000 bytes of `vpnca list --status valid --json`, whole listings and reports (wall time, peak RSS),
a keyset page, an identity search, the evidence pack of the default 90 days (plain and gzip) and its
verification, `vpnca status`. The store is filled with synthetic rows and one audit entry per row."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.common import save, table
from tests.conftest import CaHome, make_ca_home
from tests.integration.test_scale_cli import fill, first_bytes, measured

ROWS = int(os.environ.get("VPNCA_BENCH_OPERATOR_ROWS", "1000000"))
AUDIT = int(os.environ.get("VPNCA_BENCH_OPERATOR_AUDIT", str(ROWS)))


def measure(ca: CaHome, name: str, *args: str) -> dict[str, Any]:
    """Wall time and peak RSS of `vpnca ARGS > /dev/null`."""
    seconds, rss_kb = measured(ca, *args)
    return {"command": name, "seconds": round(seconds, 3), "max_rss_mb": round(rss_kb / 1024, 1)}


def size_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def test_operator_commands_at_scale(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    try:
        start = time.monotonic()
        fill(ca.store, ca.settings.ca.name, ROWS, now=datetime.now(UTC), audit_entries=AUDIT)
        fill_seconds = round(time.monotonic() - start, 1)
        rows: list[dict[str, Any]] = []
        data, seconds, status, stderr = first_bytes(ca, "list", "--status", "valid", "--json")
        assert len(data) == 1000 and status == 0 and not stderr, stderr
        rows.append({"command": "list --status valid --json | head -c 1000", "seconds": round(seconds, 3),
                     "max_rss_mb": "", "note": f"exit {status}, stderr empty"})
        data, seconds, status, stderr = first_bytes(ca, "report", "expiring", "--within", "14d", "--json")
        assert status == 0 and not stderr, stderr
        rows.append({"command": "report expiring --within 14d --json | head -c 1000",
                     "seconds": round(seconds, 3), "max_rss_mb": "", "note": f"exit {status}"})
        rows.append(measure(ca, "list --json (every row)", "list", "--json"))
        rows.append(measure(ca, "list (table, every row)", "list"))
        with ca.store.engine.connect() as conn:  # the serial in the middle of the serial order
            middle = conn.exec_driver_sql("SELECT serial FROM certificates ORDER BY serial LIMIT 1 OFFSET ?",
                                          (ROWS // 2,)).scalar_one()
        rows.append(measure(ca, "list --json --limit 1000 --after SERIAL (mid-table)", "list", "--json",
                            "--limit", "1000", "--after", str(middle)))
        rows.append(measure(ca, "list --identity dev123456. (full scan)", "list", "--identity", "dev123456."))
        rows.append(measure(ca, "report expiring --within 1d --json", "report", "expiring", "--within", "1d",
                            "--json"))
        rows.append(measure(ca, "report expiring --within 14d --json", "report", "expiring", "--within",
                            "14d", "--json"))
        rows.append(measure(ca, "status --json", "status", "--json"))
        from vpnca.cli import status_report

        start = time.monotonic()
        status_report(ca.settings, ca.store)
        rows.append({"command": "status_report() in-process (no interpreter start)",
                     "seconds": round(time.monotonic() - start, 3), "max_rss_mb": ""})
        for compress in (False, True):
            pack = tmp_path / f"pack{'-gz' if compress else ''}"
            extra = ["--gzip"] if compress else []
            row = measure(ca, f"audit export (90 days{', --gzip' if compress else ''})", "audit", "export",
                          str(pack), *extra)
            rows.append({**row, "note": f"{size_mb(pack)} MB"})
            rows.append(measure(ca, f"audit verify --pack{' (gzip)' if compress else ''}", "audit", "verify",
                                "--pack", str(pack)))
        save("operator", {"rows": ROWS, "audit_entries": AUDIT, "database": "sqlite",
                          "fill_seconds": fill_seconds, "results": rows})
        table(f"Operator commands at {ROWS} certificates, {AUDIT} audit entries (SQLite)", rows,
              ["command", "seconds", "max_rss_mb", "note"])
    finally:
        ca.store.dispose()
