"""The injectable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vpnca.clock import SYSTEM_CLOCK, Clock, FrozenClock


def test_a_frozen_clock_stands_still_until_set_or_advanced() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock: Clock = FrozenClock(start)
    assert clock.now() == clock.now() == start
    assert isinstance(clock, FrozenClock)
    assert clock.advance(timedelta(days=1)) == clock.now() == start + timedelta(days=1)
    clock.set(datetime(2030, 6, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == datetime(2030, 6, 1, tzinfo=UTC) and clock.now().tzinfo == UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2030, 1, 1))  # naive


def test_the_system_clock_is_aware_utc() -> None:
    assert SYSTEM_CLOCK.now().tzinfo == UTC
