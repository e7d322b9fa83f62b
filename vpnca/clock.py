"""The time the core decides by, injected (as Boulder's clock is): the system's in service, a frozen one in
tests, so that expiry, renewal windows and CRL timing are tested without sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that stands still until it is set or advanced (thread-safe)."""

    def __init__(self, at: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = self._checked(at or datetime.now(UTC))

    @staticmethod
    def _checked(at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("a FrozenClock holds timezone-aware times")
        return at.astimezone(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = self._checked(at)

    def advance(self, by: timedelta) -> datetime:
        """Move the clock on by `by`; the new time."""
        with self._lock:
            self._now += by
            return self._now


SYSTEM_CLOCK = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "FrozenClock", "SystemClock"]
