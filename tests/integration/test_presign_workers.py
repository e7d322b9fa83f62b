"""`vpnca serve --workers 2`: every worker pre-signs its own share of the OCSP backlog with its own token
session, and together they leave no certificate without a fresh answer."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import make_ca_home, start_server, stop_server
from tests.integration.test_scale_cli import fill
from vpnca.store.ocsp_backlog import count_without_fresh_answer


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        start = line.find("{")
        try:
            event = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            found.append(event)
    return found


def test_each_worker_presigns_its_share_until_the_backlog_is_drained(tmp_path: Path, softhsm: Any) -> None:
    ca = make_ca_home(tmp_path / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text() + "\n[ocsp]\npresign_every_seconds = 1\n")
    fill(ca.store, ca.settings.ca.name, 1200, now=datetime.now(UTC), batch=1000)
    server = start_server(ca, "--workers", "2")
    try:
        refresh_before = datetime.now(UTC) + ca.settings.ocsp.refresh_before
        deadline = time.monotonic() + 180  # a functional deadline: about 2 s of signing on an idle machine
        while count_without_fresh_answer(ca.store, ca.settings.ca.name, refresh_before) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert count_without_fresh_answer(ca.store, ca.settings.ca.name, refresh_before) == 0
        assert ca.store.count_ocsp_backlog(ca.settings.ca.name, refresh_before) == 0
        time.sleep(1)  # the events of the last batches
        published = events(server.log, "ocsp.published")
        by_share: dict[str, int] = {}
        for event in published:
            if event.get("share"):
                by_share[event["share"]] = by_share.get(event["share"], 0) + int(event["certificates"])
        assert set(by_share) == {"1/2", "2/2"}, published
        assert sum(by_share.values()) >= 1200 and all(n > 400 for n in by_share.values()), by_share
    finally:
        stop_server(server)
        ca.store.dispose()
