"""Connection records for the evidence pack: the gateway events of a period (`gateway.ike.up|down|
rekeyed`, `gateway.child.up|down|rekeyed`, `gateway.terminated`, `gateway.reconciled`) taken, in order,
from the event log (`$VPNCA_HOME/log/vpnca.jsonl`, where the watcher writes them; rotated files
`vpnca.jsonl.N` too). Streamed: memory does not grow with the number of records."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from vpnca.config import Settings

RECORDS = "gateway/connection_records.jsonl"
EVENTS = ("gateway.ike.", "gateway.child.", "gateway.terminated", "gateway.reconciled")


def _log_files(settings: Settings) -> list[Path]:
    """Oldest first: vpnca.jsonl.N ... vpnca.jsonl.1, vpnca.jsonl."""
    base = settings.home / "log" / "vpnca.jsonl"
    rotated = [p for p in base.parent.glob("vpnca.jsonl.*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return rotated + ([base] if base.exists() else [])


def _at(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def connection_records(settings: Settings, since: datetime, until: datetime) -> Iterator[str]:
    """The period's connection records, one JSON line each, as the log holds them."""
    for path in _log_files(settings):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if '"gateway.' not in line:
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                event = str(data.get("event", ""))
                moment = _at(str(data.get("ts", "")))
                if event.startswith(EVENTS) and moment is not None and since <= moment < until:
                    yield line.rstrip("\n")


def _open_text(path: Path, compress: bool) -> IO[str]:
    return gzip.open(path, "wt", encoding="utf-8") if compress else path.open("w", encoding="utf-8")


def write_connection_records(settings: Settings, directory: Path, since: datetime, until: datetime,
                             compress: bool) -> int:
    """gateway/connection_records.jsonl[.gz] in the pack; returns how many records it holds."""
    path = directory / (RECORDS + (".gz" if compress else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with _open_text(path, compress) as out:
        for line in connection_records(settings, since, until):
            out.write(line + "\n")
            count += 1
    return count
