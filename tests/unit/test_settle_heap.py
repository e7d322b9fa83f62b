"""A serving worker's heap is frozen before it accepts, so no collection walks it mid-request."""

from __future__ import annotations

import gc

from vpnca.balance import GC_THRESHOLDS, settle_heap


def test_settle_heap_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    alive = [object(), {"a": [1]}]  # containers alive before serving starts
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        assert not any(obj is alive for obj in gc.get_objects())  # frozen objects are not collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
