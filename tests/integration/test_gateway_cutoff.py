"""Revocation cut-off at the bundled gateway: revoking a device certificate terminates the IKE SAs it
authenticated within seconds, and only those; connection records from charon's VICI events."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import vici

from tests.conftest import CaHome, make_ca_home
from tests.helpers import free_port, require_tool, run
from tests.integration.gateway_lab import (
    GATEWAY_ID,
    cut_off_seconds,
    established,
    events,
    initiate,
    issue,
    load_ca_certificates,
    road_warrior_conn,
    start_ocsp_responder,
    vpnca,
    wait_for,
    wait_for_watcher,
)
from tests.integration.strongswan import Charon, two_hosts

CLIENT_ID = "rw.example.com"
OTHER_ID = "rw2.example.com"


@dataclass
class Tunnel:
    name: str  # the road warrior's connection
    identity: str
    serial: str
    inner: str


@dataclass
class Lab:
    ca: CaHome
    gw: Charon
    rw: Charon
    base: Path
    tunnels: dict[str, Tunnel]


def load_tunnel(rw: Charon, gw: Charon, ca: CaHome, tunnel: Tunnel, cert_der: bytes, key_der: bytes) -> None:
    with rw.session() as session:
        session.load_key({"type": "any", "data": key_der})
        session.load_cert({"type": "X509", "flag": "NONE", "data": cert_der})
        load_ca_certificates(session, ca)
        session.load_conn({tunnel.name: road_warrior_conn(
            local=rw.address, remote=gw.address, identity=tunnel.identity, gateway_id=GATEWAY_ID,
            cert_der=cert_der, local_ts=f"{tunnel.inner}/32", remote_ts="10.200.1.0/24")})


def gateway_sa_of(lab: Lab, name: str) -> dict[str, object] | None:
    """The gateway's IKE SA for one road-warrior connection (matched by the rw's SPI pair)."""
    rw_sas = [sa for sa in lab.rw.sas() if sa["name"] == name and sa.get("state") == "ESTABLISHED"]
    if not rw_sas:
        return None
    spi = rw_sas[0]["initiator-spi"]
    return next((sa for sa in established(lab.gw) if sa.get("initiator-spi") == spi), None)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    require_tool("ip")
    base = tmp_path_factory.mktemp("cutoff")
    ocsp_port = free_port()
    ca = make_ca_home(base / "home", softhsm, http_base=f"http://127.0.0.1:{ocsp_port}")
    with two_hosts(base) as (gw, rw):
        config = ca.home / "vpnca.toml"
        config.write_text(config.read_text()
                          + f'\n[gateway]\nid = "{GATEWAY_ID}"\nvici_socket = "{gw.vici_uri}"\n'
                          + 'local_ts = ["10.200.1.0/24"]\nremote_ts = ["10.200.2.0/24"]\n'
                          + "\n[ocsp]\npresign_every_seconds = 2\n")
        responder = start_ocsp_responder(ca, gw, ocsp_port, base / "ocsp.log")
        scheduler = None
        try:
            vpnca(ca, "gateway", "enroll")
            vpnca(ca, "gateway", "push")
            tunnels = {}
            for name, identity, inner in (("home", CLIENT_ID, "10.200.2.1"),
                                          ("again", CLIENT_ID, "10.200.2.2"),
                                          ("other", OTHER_ID, "10.200.2.3")):
                if inner != rw.inner:
                    run([require_tool("ip"), "-n", rw.netns, "addr", "add", f"{inner}/32", "dev", "lo"])
                cert_der, key_der, serial = issue(ca, identity, base / name)
                tunnels[name] = Tunnel(name, identity, serial, inner)
                load_tunnel(rw, gw, ca, tunnels[name], cert_der, key_der)
            scheduler = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "-v", "scheduler"], env=ca.env,
                                         stdout=(base / "scheduler.log").open("wb"), stderr=subprocess.STDOUT)
            wait_for_watcher(ca, {GATEWAY_ID})  # after the scheduler's first pass (OCSP pre-signing)
            yield Lab(ca, gw, rw, base, tunnels)
        finally:
            if scheduler is not None:
                scheduler.terminate()
                scheduler.wait()
            responder.terminate()
            responder.wait()
            ca.store.dispose()


def up_event(lab: Lab, tunnel: Tunnel) -> dict[str, object] | None:
    sa = gateway_sa_of(lab, tunnel.name)
    if sa is None:
        return None
    return next((e for e in events(lab.ca, "gateway.ike.up") if e.get("ike_id") == sa["uniqueid"]
                 and e.get("initiator_spi") == sa["initiator-spi"]), None)


def test_tunnels_come_up_with_connection_records(lab: Lab) -> None:
    for name in ("home", "other"):
        initiate(lab.rw, name)
    for tunnel in (lab.tunnels["home"], lab.tunnels["other"]):
        event = wait_for(f"gateway.ike.up of {tunnel.name}", partial(up_event, lab, tunnel))
        assert event["identity"] == tunnel.identity and event["serial"] == tunnel.serial, event
        assert event["gateway"] == GATEWAY_ID and event["state"] == "ESTABLISHED"
        assert event["local_address"] == lab.gw.address and event["remote_address"] == lab.rw.address
        assert event["remote_port"] == 4500 and isinstance(event["nat"], dict)
        assert event["ike"] == {"encr_alg": "AES_GCM_16", "encr_keysize": "256",
                                "prf_alg": "PRF_HMAC_SHA2_384", "dh_group": "ECP_384"}, event["ike"]
    child_up = wait_for("gateway.child.up", lambda: [e for e in events(lab.ca, "gateway.child.up")
                                                     if e.get("remote_ts") == ["10.200.2.1/32"]])
    assert child_up[0]["local_ts"] == ["10.200.1.0/24"] and child_up[0]["esp"]["encr_alg"] == "AES_GCM_16"
    assert child_up[0]["serial"] == lab.tunnels["home"].serial and child_up[0]["life_time"]


def test_sessions_lists_the_live_tunnels(lab: Lab) -> None:
    rows = json.loads(vpnca(lab.ca, "sessions", "--json"))
    by_identity = {(r["identity"], r["serial"]) for r in rows}
    assert (CLIENT_ID, lab.tunnels["home"].serial) in by_identity
    assert (OTHER_ID, lab.tunnels["other"].serial) in by_identity
    row = next(r for r in rows if r["serial"] == lab.tunnels["home"].serial)
    assert row["state"] == "ESTABLISHED" and row["children"][0]["remote_ts"] == ["10.200.2.1/32"]
    assert "serial " + lab.tunnels["other"].serial in vpnca(lab.ca, "sessions")


def test_revocation_cuts_off_only_that_certificates_tunnel(lab: Lab) -> None:
    # the same identity, re-enrolled with a new certificate, has a tunnel of its own
    initiate(lab.rw, "again")
    wait_for("gateway.ike.up of again", lambda: up_event(lab, lab.tunnels["again"]))
    revoked = lab.tunnels["home"]
    doomed = gateway_sa_of(lab, "home")
    assert doomed is not None
    run([require_tool("ip"), "netns", "exec", lab.rw.netns, "ping", "-c", "2", "-W", "2", "-I", revoked.inner,
         lab.gw.inner], check=False)  # some traffic, for the byte counts
    started = time.monotonic()
    vpnca(lab.ca, "revoke", revoked.serial, "--reason", "keyCompromise")
    wait_for("the revoked certificate's IKE SA to go",
             lambda: all(sa["uniqueid"] != doomed["uniqueid"] for sa in established(lab.gw)), timeout=5)
    latency = cut_off_seconds(lab.ca, revoked.serial, GATEWAY_ID)
    assert latency < 5, latency
    print(f"cut-off {latency:.2f}s after the revocation was recorded, "
          f"{time.monotonic() - started:.2f}s after `vpnca revoke` started")
    assert gateway_sa_of(lab, "again") is not None and gateway_sa_of(lab, "other") is not None
    entries = [json.loads(e.details) for e in lab.ca.store.audit_entries()
               if e.action == "gateway.terminated"]
    assert len(entries) == 1, entries
    assert entries[0]["serial"] == revoked.serial and entries[0]["identity"] == CLIENT_ID
    assert entries[0]["gateway"] == GATEWAY_ID and entries[0]["sas"][0]["ike_id"] == doomed["uniqueid"]
    terminated = events(lab.ca, "gateway.terminated")
    assert terminated and terminated[-1]["serial"] == revoked.serial
    down = wait_for("gateway.ike.down", lambda: [e for e in events(lab.ca, "gateway.ike.down")
                                                 if e.get("ike_id") == doomed["uniqueid"]])
    assert down[0]["serial"] == revoked.serial and down[0]["identity"] == CLIENT_ID and down[0]["reason"]
    child_down = wait_for("gateway.child.down", lambda: [e for e in events(lab.ca, "gateway.child.down")
                                                         if e.get("ike_id") == doomed["uniqueid"]])
    assert "bytes_in" in child_down[0] and "packets_out" in child_down[0], child_down[0]
    assert child_down[0]["serial"] == revoked.serial
    # the revoked certificate cannot come back: charon's cached OCSP answer was dropped
    with pytest.raises(vici.exception.CommandException):
        initiate(lab.rw, "home")
    assert gateway_sa_of(lab, "again") is not None and gateway_sa_of(lab, "other") is not None


def test_hold_cuts_off_and_release_brings_nothing_back(lab: Lab) -> None:
    held, other = lab.tunnels["again"], lab.tunnels["other"]
    doomed = gateway_sa_of(lab, "again")
    assert doomed is not None
    vpnca(lab.ca, "revoke", held.serial, "--reason", "certificateHold")
    wait_for("the held certificate's IKE SA to go",
             lambda: all(sa["uniqueid"] != doomed["uniqueid"] for sa in established(lab.gw)), timeout=5)
    vpnca(lab.ca, "release", held.serial)
    time.sleep(1)
    assert gateway_sa_of(lab, "again") is None and gateway_sa_of(lab, "other") is not None
    serials = [json.loads(e.details)["serial"] for e in lab.ca.store.audit_entries()
               if e.action == "gateway.terminated"]
    assert serials.count(held.serial) == 1 and other.serial not in serials


def test_watcher_reconnects_after_a_charon_restart_and_reconciles(lab: Lab) -> None:
    reconciled = len(events(lab.ca, "gateway.reconciled"))
    lab.gw.stop()
    (lab.gw.directory / "charon.vici").unlink(missing_ok=True)
    lab.gw.start()
    vpnca(lab.ca, "gateway", "push")
    wait_for("gateway.reconciled after the restart",
             lambda: len(events(lab.ca, "gateway.reconciled")) > reconciled, timeout=20)
    initiate(lab.rw, "again")  # released from hold: valid again, and a new tunnel is recorded
    event = wait_for("gateway.ike.up after the restart", lambda: up_event(lab, lab.tunnels["again"]))
    assert event["serial"] == lab.tunnels["again"].serial
    rows = json.loads(vpnca(lab.ca, "sessions", "--json"))
    assert [r["serial"] for r in rows] == [lab.tunnels["again"].serial], rows
