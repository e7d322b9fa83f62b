"""A million certificates (VPNCA_BENCH_SCALE_ROWS, e.g. 100000 for a quick check) on SQLite: wall time
from process start and peak RSS (GNU time -v) of `vpnca list` (a first page, everything), `vpnca report
expiring`, `vpnca audit export` of the default 90 days and `vpnca status`, run as installed (bytecode
compiled); then OCSP pre-signing by 1 and
by VPNCA_BENCH_WORKERS processes (each its own token session and share of the backlog) beside the raw
sign rate of the same signer key in as many processes, measured in the same run."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bench.common import save, table
from tests.conftest import make_ca_home
from tests.helpers import require_tool
from tests.integration.test_scale_cli import VPNCA, fill, first_bytes

ROWS = int(os.environ.get("VPNCA_BENCH_SCALE_ROWS", "1000000"))
AUDIT = int(os.environ.get("VPNCA_BENCH_SCALE_AUDIT", str(ROWS // 10)))
WORKERS = int(os.environ.get("VPNCA_BENCH_WORKERS", "2"))
SAMPLE = int(os.environ.get("VPNCA_BENCH_PRESIGN_SAMPLE", "12000"))  # certificates each process pre-signs
RAW_SECONDS = float(os.environ.get("VPNCA_BENCH_RAW_SECONDS", "8"))
ROUNDS = 3  # raw signing and pre-signing alternate, each process's sample and raw time split over them
RSS_LIMIT_MB = 200  # the target for every operator command at 1,000,000 certificates


def installed(env: dict[str, str], cache: Path) -> dict[str, str]:
    """The environment of an installed vpnca, whose modules' bytecode is compiled: this checkout may run
    with PYTHONDONTWRITEBYTECODE, which compiles every module from source at each start (~0.1-0.2 s)."""
    env = {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache)}


def gnu_time(env: dict[str, str], *args: str) -> dict[str, Any]:
    """Wall seconds from process start and peak RSS of `vpnca ARGS > /dev/null`, from `time -v`."""
    result = subprocess.run([require_tool("time"), "-v", *VPNCA, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)",
                        result.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    cpu = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", result.stderr)
    assert elapsed and rss and len(cpu) == 2, result.stderr[-2000:]
    hours, minutes, seconds = elapsed.groups()
    wall = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    # CPU seconds beside the wall time: on a machine shared with other work the wall time waits for a core
    return {"seconds": round(wall, 2), "cpu_seconds": round(sum(map(float, cpu)), 2),
            "max_rss_mb": round(int(rss.group(1)) / 1024, 1)}


def _presign_worker(home: str, index: int, count: int, sample: int, raw_seconds: float, barrier: Barrier,
                    results: Any) -> None:
    """One process: its own store and token session; the raw sign rate, then its share of pre-signing."""
    from ocsp.presign import PresignStats, Share
    from ocsp.service import load_ocsp_service
    from vpnca.config import load_settings
    from vpnca.store import Store

    settings = load_settings(Path(home))
    store = Store(settings.database_url)
    service = load_ocsp_service(settings, store)
    assert service.signer is not None
    key = service.signer.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    tbs = bytes(180)  # about a ResponseData
    algorithm = ec.ECDSA(hashes.SHA256())  # made once, as the pre-signing's signer does
    rounds = []
    for _ in range(ROUNDS):  # raw and pre-signing in turn: a change in the machine's load hits both
        barrier.wait()
        signs, started = 0, time.perf_counter()
        while time.perf_counter() - started < raw_seconds / ROUNDS:
            for _ in range(50):
                key.sign(tbs, algorithm)
            signs += 50
        raw = signs / (time.perf_counter() - started)
        barrier.wait()
        stats = PresignStats()
        started = time.perf_counter()
        service.presign_backlog(Share(index, count), stats=stats, limit=sample // ROUNDS)
        rounds.append({"raw_signs_per_s": raw, "seconds": time.perf_counter() - started,
                       "certificates": stats.certificates, "responses": stats.responses,
                       "signing": stats.signing, "encoding": stats.encoding, "reading": stats.reading,
                       "writing": stats.writing, "written": stats.written})
    results.put(rounds)
    store.dispose()


def presign_rounds(home: Path, workers: int) -> list[dict[str, Any]]:
    """Raw signing, then pre-signing, in `workers` processes at once: rates summed over the processes."""
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(workers), spawn.Queue()
    processes = [spawn.Process(target=_presign_worker, args=(str(home), i, workers, SAMPLE, RAW_SECONDS,
                                                              barrier, results)) for i in range(workers)]
    for process in processes:
        process.start()
    by_process = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [summary(workers, number, [rounds[number] for rounds in by_process]) for number in range(ROUNDS)]


def summary(workers: int, number: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One round over the processes: rates summed, pre-signing over the slowest process's time."""
    raw = sum(r["raw_signs_per_s"] for r in rows)
    wall = max(r["seconds"] for r in rows)
    responses = sum(r["responses"] for r in rows)
    # writing: what the pass waited for its writer thread; written: that thread's own time, beside the signing
    total = {phase: round(sum(r[phase] for r in rows), 2) for phase in ("signing", "encoding", "reading",
                                                                        "writing", "written", "seconds")}
    return {"workers": workers, "round": number + 1, "certificates": sum(r["certificates"] for r in rows),
            "responses": responses, "presign_responses_per_s": round(responses / wall, 1),
            "presign_certificates_per_s": round(sum(r["certificates"] for r in rows) / wall, 1),
            "raw_signs_per_s": round(raw, 1), "ratio": round(responses / wall / raw, 3),
            "seconds_by_phase_summed": total}


def test_operator_commands_and_presigning_at_scale(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    try:
        started = time.monotonic()
        fill(ca.store, ca.settings.ca.name, ROWS, now=datetime.now(UTC), audit_entries=AUDIT)
        fill_seconds = round(time.monotonic() - started, 1)
        with ca.store.engine.connect() as conn:  # the serial in the middle of the serial order
            middle = conn.exec_driver_sql("SELECT serial FROM certificates ORDER BY serial LIMIT 1 OFFSET ?",
                                          (ROWS // 2,)).scalar_one()
        pack, gzip_pack = tmp_path / "pack", tmp_path / "pack-gz"
        commands = [
            ("list --json --limit 100 (first page)", ["list", "--json", "--limit", "100"]),
            ("list --json --limit 1000 --after SERIAL (mid-table)",
             ["list", "--json", "--limit", "1000", "--after", str(middle)]),
            ("list --identity dev123456. (identity substring)", ["list", "--identity", "dev123456."]),
            ("list --status valid --limit 100 (table)", ["list", "--status", "valid", "--limit", "100"]),
            ("list --json (every row)", ["list", "--json"]),
            ("report expiring --within 14d --json", ["report", "expiring", "--within", "14d", "--json"]),
            ("audit export (default 90 days)", ["audit", "export", str(pack)]),
            ("audit export --gzip (default 90 days)", ["audit", "export", str(gzip_pack), "--gzip"]),
            ("audit verify --pack", ["audit", "verify", "--pack", str(pack)]),
            ("audit verify --pack (gzip)", ["audit", "verify", "--pack", str(gzip_pack)]),
            ("status --json", ["status", "--json"]),
            ("status --json (again)", ["status", "--json"]),
        ]
        env = installed(ca.env, tmp_path / "bytecode")
        for warm_up in (["status", "--json"], ["list", "--json", "--limit", "1"]):  # compiles their imports
            gnu_time(env, *warm_up)
        rows = [{"command": name, **gnu_time(env, *args)} for name, args in commands]
        # the two 1-second targets as this checkout runs them (with PYTHONDONTWRITEBYTECODE: from source)
        checkout = "from source" if ca.env.get("PYTHONDONTWRITEBYTECODE") else "bytecode as found"
        rows += [{"command": f"{name}, this checkout ({checkout})", **gnu_time(ca.env, *args)}
                 for name, args in (commands[0], commands[-2])]
        streamed = (("list", "--status", "valid", "--json"),
                    ("report", "expiring", "--within", "14d", "--json"))
        for args in streamed:
            data, seconds, status, stderr = first_bytes(ca, *args)  # a reader that stops, as `head -c` does
            assert status == 0 and not stderr and (args[0] != "list" or len(data) == 1000), stderr
            rows.append({"command": f"{' '.join(args)} | head -c 1000", "seconds": round(seconds, 3),
                         "cpu_seconds": "", "max_rss_mb": 0.0})
        presigning = presign_rounds(ca.home, 1) + presign_rounds(ca.home, WORKERS)
        for workers in (1, WORKERS):  # all rounds together: responses over time, beside the mean raw rate
            rounds = [p for p in presigning if p["workers"] == workers]
            rate = sum(p["responses"] for p in rounds) / sum(p["responses"] / p["presign_responses_per_s"]
                                                            for p in rounds)
            raw = sum(p["raw_signs_per_s"] for p in rounds) / len(rounds)
            presigning.append({"workers": workers, "round": "all", "certificates": sum(p["certificates"]
                                                                                      for p in rounds),
                               "presign_responses_per_s": round(rate, 1), "raw_signs_per_s": round(raw, 1),
                               "ratio": round(rate / raw, 3)})
        save("scale", {"rows": ROWS, "audit_entries": AUDIT, "database": "sqlite",
                       "fill_seconds": fill_seconds, "commands": rows, "presigning": presigning})
        table(f"Operator commands at {ROWS} certificates (SQLite; wall time from process start)", rows,
              ["command", "seconds", "cpu_seconds", "max_rss_mb"])
        table("OCSP pre-signing beside the signer key's raw sign rate (same processes, same run)", presigning,
              ["workers", "round", "certificates", "presign_responses_per_s", "raw_signs_per_s", "ratio",
               "seconds_by_phase_summed"])
        assert all(r["max_rss_mb"] < RSS_LIMIT_MB for r in rows), rows
        assert all(p["certificates"] >= min(SAMPLE // ROUNDS, ROWS // 4) for p in presigning
                   if p["round"] != "all"), presigning
    finally:
        ca.store.dispose()
