"""Outages of what the service depends on (the database, the token), logged once each way.

While a dependency is down every request fails the same way: the log gets one line when it goes
down (repeated at most once a minute while it stays down) and one when it is back, not one
traceback per request.
"""

from __future__ import annotations

import logging
import threading
import time

from vpnca.events import emit

REPEAT_EVERY_SECONDS = 60.0


class Outages:
    """Per dependency: down since when, and when it was last said."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, tuple[float, float]] = {}  # name -> (since, last logged), monotonic

    def down(self, dependency: str, error: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            since, said = self._down.get(dependency, (now, 0.0))
            if said and now - said < REPEAT_EVERY_SECONDS:
                return
            self._down[dependency] = (since, now)
        emit("dependency.down", logging.ERROR, dependency=dependency, error=type(error).__name__,
             down_seconds=round(now - since, 1))

    def up(self, dependency: str) -> None:
        if dependency not in self._down:  # the common case: no lock, no work
            return
        with self._lock:
            state = self._down.pop(dependency, None)
        if state is not None:
            emit("dependency.up", dependency=dependency, down_seconds=round(time.monotonic() - state[0], 1))

    def is_down(self, dependency: str) -> bool:
        return dependency in self._down


OUTAGES = Outages()  # one per process: every worker says it for itself

__all__ = ["OUTAGES", "Outages"]
