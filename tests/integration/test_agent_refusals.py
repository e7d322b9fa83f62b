"""`vpnca agent` refusals against a real `vpnca serve`: a wrong CA fingerprint stops before the token is
sent; a revoked certificate cannot re-enroll; an expired one can only within `est.reenroll_grace`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken
from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import remember_secret
from tests.integration.gateway_lab import vpnca
from tests.integration.test_agent import SERVER_NAMES, agent_env, root_fingerprint

GRACE_SECONDS = 30
DEVICE_SECONDS = 4


@dataclass
class Ca:
    ca: CaHome
    server: RunningServer
    base: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.https_port}"


@pytest.fixture(scope="module")
def grace_ca(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsmToken) -> Iterator[Ca]:
    base = tmp_path_factory.mktemp("agent-refusals")
    ca = make_ca_home(base / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text().replace("[profiles.device]\nlifetime_days = 7",
                                                 f"[profiles.device]\nlifetime_seconds = {DEVICE_SECONDS}")
                      + SERVER_NAMES + f"\n[est]\nreenroll_grace_seconds = {GRACE_SECONDS}\n")
    server = start_server(ca)
    try:
        yield Ca(ca, server, base)
    finally:
        stop_server(server)
        ca.store.dispose()


def agent(lab: Ca, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpnca.cli", "agent", *args], env=agent_env(), cwd=lab.base,
                          capture_output=True, text=True, timeout=120, check=False)


def enroll(lab: Ca, name: str, identity: str, profile: str = "device") -> dict[str, str]:
    token = vpnca(lab.ca, "token", "create", "--id", identity, "--profile", profile).strip()
    remember_secret(token.partition(":")[2])
    result = agent(lab, "enroll", "--server", lab.url, "--cacert", str(lab.ca.home / "ca/root.pem"),
                   "--token", token, "--id", identity, "--profile", profile, "--dir", str(lab.base / name))
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def test_wrong_ca_fingerprint_stops_before_the_token_is_sent(grace_ca: Ca) -> None:
    token = vpnca(grace_ca.ca, "token", "create", "--id", "gw2.example.com", "--profile", "gateway").strip()
    remember_secret(token.partition(":")[2])
    token_id = token.partition(":")[0]
    directory = grace_ca.base / "wrong"
    result = agent(grace_ca, "enroll", "--server", grace_ca.url, "--ca-fingerprint", "ab" * 32,
                   "--token", token,
                   "--id", "gw2.example.com", "--profile", "gateway", "--dir", str(directory))
    assert result.returncode == 4, result.stdout + result.stderr
    assert "fingerprint" in result.stderr and "nothing else was sent" in result.stderr
    record = grace_ca.ca.store.get_enrollment_token(token_id)
    assert record is not None and record.used_at is None  # never presented
    assert not directory.exists()
    # the same token, with the right fingerprint, still enrolls
    good = agent(grace_ca, "enroll", "--server", grace_ca.url, "--ca-fingerprint",
                 root_fingerprint(grace_ca.ca), "--token", token, "--id", "gw2.example.com",
                 "--profile", "gateway", "--dir", str(directory))
    assert good.returncode == 0, good.stdout + good.stderr
    state = json.loads((directory / "state.json").read_text())
    assert state["trust_anchor_sha256"] == root_fingerprint(grace_ca.ca)


def test_reenroll_with_revoked_cert_is_refused(grace_ca: Ca) -> None:
    enrolled = enroll(grace_ca, "revoked", "gw3.example.com", profile="gateway")
    vpnca(grace_ca.ca, "revoke", enrolled["serial"], "--reason", "keyCompromise")
    result = agent(grace_ca, "renew", "--force", "--dir", str(grace_ca.base / "revoked"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "revoked" in result.stderr and "vpnca agent enroll" in result.stderr
    status = json.loads(agent(grace_ca, "status", "--json", "--dir", str(grace_ca.base / "revoked")).stdout)
    assert status["serial"] == enrolled["serial"] and "revoked" in status["last_error"]


def test_expired_certificate_renews_only_within_the_grace(grace_ca: Ca) -> None:
    outside = enroll(grace_ca, "outside", "laptop1.example.com")
    outside_expiry = datetime.fromisoformat(outside["not_after"])
    sleep_until(outside_expiry + _seconds(GRACE_SECONDS - 8))
    inside = enroll(grace_ca, "inside", "laptop2.example.com")
    inside_expiry = datetime.fromisoformat(inside["not_after"])
    sleep_until(max(inside_expiry + _seconds(1), outside_expiry + _seconds(GRACE_SECONDS + 1)))

    renewed = agent(grace_ca, "renew", "--dir", str(grace_ca.base / "inside"))
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert json.loads(renewed.stdout.strip().splitlines()[-1])["renewed"] == inside["serial"]
    audit = [e.details for e in grace_ca.ca.store.audit_entries() if "within grace" in e.details]
    assert any(inside["serial"] in d for d in audit), "the grace renewal is audited as such"
    assert "renewal after expiry within grace" in (grace_ca.ca.home / "serve.log").read_text()

    refused = agent(grace_ca, "renew", "--dir", str(grace_ca.base / "outside"))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "expired" in refused.stderr and "new enrollment token" in refused.stderr
    assert "vpnca agent enroll" in refused.stderr


def _seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def test_the_agent_renews_early_when_the_ca_asks(grace_ca: Ca) -> None:
    enrolled = enroll(grace_ca, "early", "gw5.example.com", profile="gateway")  # 30 days: not due
    directory = str(grace_ca.base / "early")
    quiet = agent(grace_ca, "renew", "--dir", directory)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert json.loads(quiet.stdout.strip().splitlines()[-1])["event"] == "agent.not_due"
    vpnca(grace_ca.ca, "renew-early", "--serial", enrolled["serial"])
    renewed = agent(grace_ca, "renew", "--dir", directory)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    outcome = json.loads(renewed.stdout.strip().splitlines()[-1])
    assert outcome["event"] == "agent.renewed" and outcome["renewed"] == enrolled["serial"]
    assert '"agent.renew_early"' in renewed.stdout  # and it says why
