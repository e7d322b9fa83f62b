"""The scheduler: a failing gateway push is recorded, audited, backed off and shown by `vpnca status`."""

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import make_ca_home
from tests.helpers import run
from vpnca.config import load_settings
from vpnca.gateway.credentials import GatewayFiles, enroll_gateway
from vpnca.gateway.renewal import renew_gateway_if_due
from vpnca.gateway.vici_client import GatewayError
from vpnca.revocation import Publisher
from vpnca.scheduler import build_scheduler


class DaysAhead:
    """The machine's clock, moved on: the scheduler's backoff runs in real time, days from now."""

    def __init__(self, days: int) -> None:
        self.offset = timedelta(days=days)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_failed_gateway_renewal_is_retried_with_backoff_and_shown(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text()
                      + f'\n[gateway]\nid = "vpn.example.com"\nvici_socket = "unix://{tmp_path}/none.vici"\n')
    ca.authority.settings = load_settings(ca.home)
    enroll_gateway(ca.authority, requester="test")
    ca.authority.clock = DaysAhead(25)  # past 2/3 of the 30 days (plus the jitter): renewal is due
    scheduler = build_scheduler(Publisher(ca.authority), gateway_every=timedelta(seconds=1))
    scheduler.start()
    time.sleep(4.5)
    scheduler.shutdown(wait=True)
    runs = {r.job: r for r in ca.store.job_runs()}
    failed = runs["gateway-renewal"]
    assert not failed.ok and "VICI socket" in failed.message and failed.next_attempt is not None
    assert 1 <= failed.failures <= 3  # 1 s, then 2 s, then 4 s apart: not every tick
    assert runs["crl"].ok and runs["ocsp-presign"].ok
    assert any(e.action == "job-failed" for e in ca.store.audit_entries())
    status = run([sys.executable, "-m", "vpnca.cli", "status"], env=ca.env).stdout
    assert "gateway-renewal" in status and "FAILED" in status
    ca.store.dispose()


def test_a_certificate_whose_push_failed_is_pushed_again(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]

    ca = make_ca_home(tmp_path / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text() + f'\n[gateway]\nid = "vpn.example.com"\nvici_socket = "unix://{tmp_path}/x"\n')
    ca.authority.settings = load_settings(ca.home)
    enroll_gateway(ca.authority, requester="test")  # not pushed yet: charon has never seen it
    assert GatewayFiles.of(ca.authority.settings).pushed_serial() is None
    with pytest.raises(GatewayError, match="VICI socket"):  # the push is attempted; no charon listens here
        renew_gateway_if_due(ca.authority)
    ca.store.dispose()
