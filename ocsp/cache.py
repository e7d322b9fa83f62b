"""Pre-signed answers held in memory by each responder process, kept in step with the database.

Answers are keyed by CertID (hash algorithm, issuerNameHash, issuerKeyHash, serial), never by the
bytes of a request: however many ways a client encodes or pads its request, one certificate and hash
costs one entry. The store is bounded in bytes (64 MiB by default) and evicts the least recently
used answers first.

On SQLite, `PRAGMA data_version` on a dedicated connection changes whenever another connection has
committed, so lookups check it (a few microseconds; at most once a millisecond) and re-read the
answers signed since the last check: a revocation is visible within a millisecond. Other databases
are polled for changed answers once a second.

While the database is down, answers already in memory keep being served, a miss raises
`StoreUnavailable` (the responder answers tryLater), and the database is tried again at most once a
second; the outage is logged once when it starts (repeated at most once a minute) and once when it ends.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ocsp.responses import CertIdKey, IssuerHashes
from vpnca.errors import StoreUnavailable
from vpnca.outage import OUTAGES
from vpnca.store import Store

Entry = tuple[bytes, datetime]
SQLITE_CHECK_SECONDS = 0.001
DATABASE_RETRY_SECONDS = 1.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# what one entry costs beside its DER: the key tuple and its bytes/int, the entry tuple, the datetime and
# the ordered dict's slot and link (measured with tracemalloc: ~450 bytes)
ENTRY_OVERHEAD = 512


def _serial_hex(serial: int) -> str:
    return format(serial, "x")


class PresignedCache:
    def __init__(self, store: Store, issuer_hashes: IssuerHashes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 poll_seconds: float = 1.0) -> None:
        self.store = store
        self.issuer_hashes = issuer_hashes
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self.entries: OrderedDict[CertIdKey, Entry] = OrderedDict()  # least recently used first
        self.size_bytes = 0  # DER plus ENTRY_OVERHEAD for each entry
        self._since = datetime.now(UTC) - timedelta(seconds=2)
        self._retry_at = 0.0  # while the database is down: monotonic time of the next attempt
        self._watch = store.change_watch()
        self._changed: Callable[[], bool]
        if self._watch is not None:
            self._checked = 0.0
            self._changed = self._sqlite_changed
        else:
            self._last_poll = time.monotonic()
            self._changed = self._poll_due

    # -- change detection ------------------------------------------------------------------------

    def _sqlite_changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < SQLITE_CHECK_SECONDS:
            return False
        self._checked = now
        assert self._watch is not None
        return self._watch.changed()

    def _poll_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_poll < self.poll_seconds:
            return False
        self._last_poll = now
        return True

    def _refresh(self) -> None:
        """Replace cached answers that were re-signed since the last refresh."""
        started = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)  # whole-second this_update
        for serial, algorithm, der, next_update in self.store.ocsp_answers_since(self._since):
            if algorithm not in self.issuer_hashes.by_algorithm:
                continue
            key = self.issuer_hashes.key(algorithm, int(serial, 16))
            if key in self.entries:
                self._put(key, (der, next_update))
        self._since = started

    # -- database state --------------------------------------------------------------------------

    @property
    def database_down(self) -> bool:
        return self._retry_at != 0.0

    def _down(self, error: BaseException) -> None:
        self._retry_at = time.monotonic() + DATABASE_RETRY_SECONDS
        OUTAGES.down("database", error)

    def database_is_up(self) -> None:
        """A read elsewhere (live signing) succeeded: the database is back."""
        if self._retry_at:
            self._up()

    def _up(self) -> None:
        if self._retry_at:
            self._retry_at = 0.0
            OUTAGES.up("database")

    # -- the store -------------------------------------------------------------------------------

    def _put(self, key: CertIdKey, entry: Entry) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size_bytes -= len(old[0]) + ENTRY_OVERHEAD
        self.entries[key] = entry
        self.size_bytes += len(entry[0]) + ENTRY_OVERHEAD
        while self.size_bytes > self.max_bytes and self.entries:
            _, evicted = self.entries.popitem(last=False)
            self.size_bytes -= len(evicted[0]) + ENTRY_OVERHEAD

    def get(self, key: CertIdKey) -> Entry | None:
        """The pre-signed answer for CertID `key` (one of ours), None if the database has none.

        Raises StoreUnavailable when the answer is not in memory and the database cannot be read.
        """
        reachable = True
        try:
            if not self._retry_at:
                if self._changed():
                    self._refresh()
            elif time.monotonic() < self._retry_at:
                reachable = False
            else:  # the database was down: catch up on what changed meanwhile, which proves it is back
                self._refresh()
                self._up()
        except StoreUnavailable as exc:
            self._down(exc.__cause__ or exc)
            reachable = False
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
            return found
        if not reachable:
            raise StoreUnavailable("the database is unavailable")
        try:
            entry = self.store.ocsp_answer(_serial_hex(key[3]), key[0])
        except StoreUnavailable as exc:
            self._down(exc.__cause__ or exc)
            raise
        self._up()
        if entry is not None:
            self._put(key, entry)
        return entry
