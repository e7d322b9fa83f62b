"""The pre-signing's writer thread: pages written in order, one behind the signing, their errors raised."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ocsp.presign import PageWriter, PresignStats
from vpnca.errors import StoreUnavailable


def test_pages_are_written_in_order_beside_the_caller_and_a_failed_write_is_raised() -> None:
    written: list[list[tuple[Any, ...]]] = []
    threads: set[int] = set()

    def save(values: list[tuple[Any, ...]]) -> None:
        threads.add(threading.get_ident())
        if values[0][0] == "fail":
            raise StoreUnavailable("the database cannot be reached")
        written.append(values)

    stats = PresignStats()
    with pytest.raises(StoreUnavailable), PageWriter(save, stats) as writer:
        writer.write([("page", 1)])
        writer.write([("page", 2)])
        writer.write([("fail",)])  # raised when the block ends: the signing does not wait for it
    assert written == [[("page", 1)], [("page", 2)]]
    assert threads and threading.get_ident() not in threads and stats.written > 0


def test_an_error_of_the_caller_wins_over_the_write_in_flight() -> None:
    def save(values: list[tuple[Any, ...]]) -> None:
        raise StoreUnavailable("the database cannot be reached")

    with pytest.raises(KeyError), PageWriter(save, PresignStats()) as writer:
        writer.write([("page", 1)])
        raise KeyError("signing failed")
