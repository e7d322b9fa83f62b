"""Revocation at scale: the CRL builder beside `openssl ca -gencrl` on the same serials, and the time
from a revoke to its publication (OCSP answer re-signed, delta or shard CRL signed and written) at
0, 100,000 and 1,000,000 revoked certificates, plus a burst of concurrent revocations.

Sizes: VPNCA_BENCH_CRL_SIZES (default "100000,1000000") and VPNCA_BENCH_REVOKED_SIZES
(default "0,100000,1000000"); every run's figures are printed and saved, not only the median."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.common import save, table
from tests.bench.test_bench_ocsp import add_certificates, openssl_gencrl_seconds
from tests.conftest import CaHome, make_ca_home
from vpnca.authority import Authority
from vpnca.config import load_settings
from vpnca.crl import generate_crl
from vpnca.revocation import Publisher

CRL_SIZES = [int(n) for n in os.environ.get("VPNCA_BENCH_CRL_SIZES", "100000,1000000").split(",")]
REVOKED_SIZES = [int(n) for n in os.environ.get("VPNCA_BENCH_REVOKED_SIZES", "0,100000,1000000").split(",")]
REVOKES = 5  # single revocations timed at each size
BURST = 20  # revocations arriving together


def test_crl_generation_time(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for count in CRL_SIZES:
        ca = make_ca_home(tmp_path / f"crl{count}", softhsm)
        serials = add_certificates(ca, count, status_all="revoked")
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            published = generate_crl(ca.authority, actor="bench")
            runs.append(time.perf_counter() - started)
        theirs = [openssl_gencrl_seconds(ca, tmp_path / f"o{count}-{i}", serials) for i in range(2)]
        size = (ca.home / "crl" / f"{ca.settings.ca.name}.crl").stat().st_size
        rows.append({"revoked": count, "entries": published.entries,
                     "vpnca_seconds": [round(s, 2) for s in runs],
                     "openssl_ca_gencrl_seconds": [round(s, 2) for s in theirs],
                     "speedup": round(min(theirs) / min(runs), 2), "crl_bytes": size})
        ca.store.dispose()
    save("crl", {"rows": rows})
    table("CRL generation (full CRL signed on the token) beside openssl ca -gencrl, every run", rows,
          list(rows[0]))
    assert all(r["entries"] == r["revoked"] for r in rows)


SHARDS = "\n[crl]\nshards = 16\nshard_window_hours = 6\n"


def _configured(ca: CaHome, crl_section: str) -> CaHome:
    """The same CA with another [crl] section (the last one written wins: the file is rewritten)."""
    path = ca.home / "vpnca.toml"
    text = path.read_text()
    path.write_text((text[:text.index("\n[crl]\n")] if "\n[crl]\n" in text else text) + crl_section)
    settings = load_settings(ca.home)
    return CaHome(settings, ca.store, ca.hierarchy, Authority.open(settings, ca.store), ca.env)


def _revoke_and_publish(ca: CaHome, publisher: Publisher, serial: str) -> float:
    started = time.perf_counter()
    ca.authority.revoke(serial, "keyCompromise", actor="bench")
    publisher.publish_revocation(serial, "bench")
    return time.perf_counter() - started


def _measure(ca: CaHome, mode: str, revoked: int) -> dict[str, Any]:
    publisher = Publisher(ca.authority)
    generate_crl(ca.authority, actor="bench")  # the base (and the shards), as the hourly job leaves it
    fresh = add_certificates(ca, REVOKES + BURST, status_all="valid",
                             crl=ca.settings.crl if mode == "shards" else None)
    singles = [_revoke_and_publish(ca, publisher, format(s, "x")) for s in fresh[:REVOKES]]
    first = ca.store.next_crl_number()
    burst_times: list[float] = []

    def revoke(serial: int) -> None:
        burst_times.append(_revoke_and_publish(ca, publisher, format(serial, "x")))

    started = time.perf_counter()
    threads = [threading.Thread(target=revoke, args=(s,)) for s in fresh[REVOKES:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst_seconds = time.perf_counter() - started
    return {"mode": mode, "revoked": revoked, "revoke_to_published_ms": [round(s * 1000, 1) for s in singles],
            "median_ms": round(statistics.median(singles) * 1000, 1),
            f"burst_{BURST}_total_ms": round(burst_seconds * 1000, 1),
            "burst_max_ms": round(max(burst_times) * 1000, 1),
            "burst_crls": ca.store.next_crl_number() - first}


def test_revoke_to_published_latency(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for count in REVOKED_SIZES:
        base = _configured(make_ca_home(tmp_path / f"rev{count}", softhsm), SHARDS)
        # revoked certificates expiring over the next week, each with the shard its expiry gives
        add_certificates(base, count, status_all="revoked", crl=base.settings.crl)
        for mode, section in (("delta", "\n[crl]\ndelta = true\n"), ("shards", SHARDS)):
            rows.append(_measure(_configured(base, section), mode, count))
        base.store.dispose()
    save("revocation", {"revokes": REVOKES, "burst": BURST, "rows": rows})
    table("revoke -> published (OCSP re-signed + delta or shard CRL), every run", rows, list(rows[0]))
    assert all(r["burst_crls"] < BURST for r in rows)  # a burst is coalesced, not queued
