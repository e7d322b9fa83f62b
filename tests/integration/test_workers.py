"""`vpnca serve --workers N` and `vpnca ocsp serve --workers N`: no worker outlives its parent."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CaHome, start_server, wait_for_port
from tests.helpers import free_port, stop_process


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


def wait_gone(pids: set[int], seconds: float = 15) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


def workers_of(pid: int, count: int) -> set[int]:
    """The spawned workers (multiprocessing also starts a resource tracker: not counted)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
                 and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()}
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{count} workers of {pid} did not start")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_serve_workers_go_with_their_parent(ca_home: CaHome, how: signal.Signals) -> None:
    server = start_server(ca_home, "--workers", "2")
    try:
        workers = workers_of(server.process.pid, 2)
        os.kill(server.process.pid, how)
        server.process.wait(timeout=15)
        assert wait_gone(workers) == set(), f"workers left running after {how.name}"
    finally:
        stop_process(server.process)


def test_ocsp_workers_go_with_their_parent(ca_home: CaHome) -> None:
    import subprocess

    port = free_port()
    log = ca_home.home / "ocsp.log"
    process = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port),
                                "--workers", "2"],
                               env=ca_home.env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        workers = workers_of(process.pid, 2)
        process.kill()
        process.wait(timeout=15)
        assert wait_gone(workers) == set()
    finally:
        stop_process(process)
