"""Benchmark helpers: wrk runs, results as JSON under bench-results/, a printed table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import require_tool

RESULTS = Path(os.environ.get("VPNCA_BENCH_RESULTS", "bench-results"))
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, *, connections: int, seconds: int, script: Path | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """Run wrk and return requests/s, p50/p99 latency (ms) and the count of non-2xx/3xx answers."""
    cmd = [require_tool("wrk"), "--latency", "-d", f"{seconds}s", "-c", str(connections),
           "-t", str(threads or min(connections, 2))]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.MULTILINE))
    if set(latency) != {"50", "99"}:
        raise AssertionError(f"cannot read wrk's latency distribution:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def save(name: str, results: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = {c: max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c, '')}".ljust(widths[c]) for c in columns))


def hey(url: str, *, connections: int, seconds: int) -> dict[str, Any]:
    """Run hey (it also speaks to servers that close every connection, as `openssl ocsp` does)."""
    cmd = [require_tool("hey"), "-z", f"{seconds}s", "-c", str(connections), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%+ in ([\d.]+) secs", out, re.MULTILINE))
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    total = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": float(latency.get("50", "nan")) * 1000,
        "p99_ms": float(latency.get("99", "nan")) * 1000,
        "ok": int(ok.group(1)) if ok else 0,
        "non_2xx": total - (int(ok.group(1)) if ok else 0),
    }
