"""Pre-signed answers held in memory by each responder process, kept in step with the database.

On SQLite, `PRAGMA data_version` on a dedicated connection changes whenever another connection has
committed, so lookups check it (a few microseconds; at most once a millisecond) and re-read the
answers signed since the last check: a revocation is visible within a millisecond. Other databases are polled for
changed answers once a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from vpnca.store import Store

_CHANGED = text("SELECT serial, hash_algorithm, der, next_update FROM ocsp_responses WHERE this_update >= :since")
_ONE = text("SELECT der, next_update FROM ocsp_responses WHERE serial = :serial AND hash_algorithm = :alg")
Entry = tuple[bytes, datetime]
SQLITE_CHECK_SECONDS = 0.001


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class PresignedCache:
    def __init__(self, store: Store, *, max_entries: int = 250_000, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.max_entries = max_entries
        self.poll_seconds = poll_seconds
        self.entries: dict[tuple[str, str], Entry] = {}
        self._since = datetime.now(UTC) - timedelta(seconds=2)
        self._changed: Callable[[], bool]
        if store.engine.dialect.name == "sqlite":
            self._raw = store.engine.raw_connection()
            self._checked = 0.0
            self._version = self._data_version()
            self._changed = self._sqlite_changed
        else:
            self._last_poll = time.monotonic()
            self._changed = self._poll_due

    def _data_version(self) -> int:
        cursor = self._raw.cursor()
        cursor.execute("PRAGMA data_version")
        version = int(cursor.fetchone()[0])
        cursor.close()
        return version

    def _sqlite_changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < SQLITE_CHECK_SECONDS:
            return False
        self._checked = now
        version = self._data_version()
        if version == self._version:
            return False
        self._version = version
        return True

    def _poll_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_poll < self.poll_seconds:
            return False
        self._last_poll = now
        return True

    def _refresh(self) -> None:
        """Replace cached answers that were re-signed since the last refresh."""
        started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)  # whole-second this_update
        with self.store.engine.connect() as conn:
            for serial, algorithm, der, next_update in conn.execute(_CHANGED, {"since": self._since}):
                if (serial, algorithm) in self.entries:
                    self.entries[(serial, algorithm)] = (bytes(der), _aware(next_update))
        self._since = started

    def get(self, serial: str, algorithm: str) -> Entry | None:
        if self._changed():
            self._refresh()
        found = self.entries.get((serial, algorithm))
        if found is not None:
            return found
        with self.store.engine.connect() as conn:
            row = conn.execute(_ONE, {"serial": serial, "alg": algorithm}).first()
        if row is None:
            return None
        if len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        entry = (bytes(row[0]), _aware(row[1]))
        self.entries[(serial, algorithm)] = entry
        return entry
