"""Metrics are registered once per process even when the first updates come from many threads."""

from __future__ import annotations

import subprocess
import sys

RACE = """
import sys
import threading
sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
from vpnca import metrics
barrier = threading.Barrier(32)
errors = []
def first_issuance():
    barrier.wait()
    try:
        metrics.issued("est", "device", "issued")
    except Exception as exc:
        errors.append(exc)
threads = [threading.Thread(target=first_issuance) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
"""


def test_first_metric_updates_from_many_threads_at_once() -> None:
    for _ in range(5):  # a fresh process each time: registration happens once per process
        result = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stderr
