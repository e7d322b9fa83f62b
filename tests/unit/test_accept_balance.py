"""Least-connections accepting across `vpnca serve` workers."""

from __future__ import annotations

import time

from vpnca.balance import AcceptBalance


def test_only_the_least_loaded_live_workers_accept() -> None:
    counts, beats = [0, 0, 0], [0.0, 0.0, 0.0]
    first, second = AcceptBalance(counts, beats, 0), AcceptBalance(counts, beats, 1)
    second.beat()
    assert first.may_accept(0) and second.may_accept(0)
    assert not first.may_accept(1)  # the second worker holds fewer
    assert second.may_accept(0) and not second.may_accept(2)
    assert first.may_accept(2)  # level again


def test_a_worker_that_never_started_or_died_does_not_hold_the_others_back() -> None:
    counts, beats = [0, 0], [0.0, 0.0]
    alive, dead = AcceptBalance(counts, beats, 0), AcceptBalance(counts, beats, 1)
    dead.may_accept(0)
    assert not alive.may_accept(3)  # the other worker beats and holds none
    beats[1] = time.monotonic() - 2 * AcceptBalance.STALE_SECONDS  # it stopped beating
    assert alive.may_accept(3)
