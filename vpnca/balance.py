"""Least-connections accepting across worker processes that share one listening socket.

asyncio accepts every pending connection on each wake-up, so with long-lived (keep-alive) clients
one worker could end up with most of them while another idles. Each worker publishes its open
connections and a heartbeat in shared arrays and takes new connections only while it is among the
least loaded of the live workers; the others leave them in the kernel's queue. A worker that has
not started, has died or is stuck stops beating and no longer counts; a worker that replaces a dead
one takes over its index (the supervisor clears the slot first, see AcceptBalance.retire).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vpnca.server")

RECHECK_SECONDS = 0.005


class AcceptBalance:
    """One worker's view of the shared connection counts and heartbeats."""

    STALE_SECONDS = 1.0

    def __init__(self, counts: Any, beats: Any, index: int) -> None:
        self.counts = counts  # multiprocessing.Array("i", workers), lock-free
        self.beats = beats  # multiprocessing.Array("d", workers): time.monotonic() of each worker's last beat
        self.index = index

    def beat(self) -> None:
        self.beats[self.index] = time.monotonic()

    def retire(self) -> None:
        """The worker at this index has exited (the supervisor says so): it counts no more at once,
        without waiting for its heartbeat to go stale. Its replacement starts from an empty slot."""
        self.beats[self.index] = 0.0
        self.counts[self.index] = 0

    async def keep_beating(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.STALE_SECONDS / 4)

    def may_accept(self, open_connections: int) -> bool:
        self.counts[self.index] = open_connections
        self.beat()
        now = time.monotonic()
        live: list[int] = [count for count, beat in zip(self.counts, self.beats, strict=True)
                           if now - beat < self.STALE_SECONDS]
        return open_connections <= min(live)


def shared_balance(workers: int) -> Callable[[int], AcceptBalance]:
    """Shared arrays for `workers` processes (spawned); returns worker i's AcceptBalance."""
    spawn = multiprocessing.get_context("spawn")
    counts = spawn.Array("i", max(workers, 1), lock=False)
    beats = spawn.Array("d", max(workers, 1), lock=False)
    return lambda index: AcceptBalance(counts, beats, index)


# young-generation collections rarer than the default (700 allocations): a request allocates a few
# dozen containers, nearly all freed by reference counting
GC_THRESHOLDS = (20_000, 20, 100)


def settle_heap() -> None:
    """A worker about to serve: collect once, then move everything alive (modules, settings, the
    token session, the caches so far) into the permanent generation (gc.freeze), so that no later
    collection walks it. A full collection of a responder's heap took tens of milliseconds, paid by
    whichever request triggered it: a p99 that grew with the heap and with CPU contention."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def accept_balanced(sock: socket.socket, balance: AcceptBalance, open_connections: Callable[[], int],
                          start: Callable[[socket.socket], Any]) -> None:
    """Accept on `sock` whenever this worker is among the least loaded; hand each connection to `start`,
    which must count it in `open_connections` at once: a burst of connections is accepted without the
    loop turning, and a count that lagged would let one worker take the whole burst."""
    settle_heap()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while True:
        if not balance.may_accept(open_connections()):
            await asyncio.sleep(RECHECK_SECONDS)
            continue
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:  # EMFILE and the like: back off, keep serving
            log.warning("accept failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        start(conn)


__all__ = ["AcceptBalance", "accept_balanced", "settle_heap", "shared_balance"]
