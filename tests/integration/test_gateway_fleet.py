"""Two gateways managed at once, with groups and the crypto policy on the wire: three charons in network
namespaces (a road warrior joined to two gateways). Gateway 1 is `[gateway]` (vpnca holds its key, on
its unix VICI socket) serving groups shop-a and shop-b; gateway 2 is a `[[gateways]]` entry whose host
enrolls and renews itself with `vpnca agent` and which vpnca reaches only through `vpnca agent
vici-relay` (mutual TLS). One lab serves every test of the module, in order."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import vici
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import free_port, remember_secret, require_tool, run, stop_process
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
    terminate,
    vpnca,
    wait_for,
    wait_for_watcher,
)
from tests.integration.strongswan import Charon, road_warrior_and_gateways

GATEWAY2 = "vpn2"
GATEWAY2_ID = "vpn2.example.com"
CONTROLLER_ID = "ca-control.example.com"  # what vpnca presents to the relay
DEVICE_A = "d1.a.example.com"
DEVICE_A2 = "d2.a.example.com"
DEVICE_B = "d1.b.example.com"
SUBNET_A, SUBNET_B = "10.200.1.0/24", "10.200.3.0/24"
RW_INNER = "10.200.2.1"
INNER_PORT = 8000  # an HTTP server on gateway 1's inner address, reached through the tunnel


@dataclass
class Lab:
    base: Path
    ca: CaHome
    rw: Charon
    gw1: Charon
    gw2: Charon
    server: RunningServer
    agent_dir: Path
    started: datetime
    serials: dict[str, str] = field(default_factory=dict)


def agent(lab_base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`vpnca agent ...` as the gateway host runs it: no VPNCA_HOME, no CA database, no CA token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPNCA_") and k != "SOFTHSM2_CONF"}
    return subprocess.run([sys.executable, "-m", "vpnca.cli", "agent", *args], env=env, cwd=lab_base,
                          capture_output=True, text=True, timeout=180, check=False)


def config(gw1: Charon, relay_port: int) -> str:
    return f"""
[gateway]
id = "{GATEWAY_ID}"
vici_socket = "{gw1.vici_uri}"
groups = ["shop-a", "shop-b"]
check_every_seconds = 3

[groups.shop-a]
identities = ["*.a.example.com"]
local_ts = ["{SUBNET_A}"]
remote_ts = ["10.200.2.0/24"]

[groups.shop-b]
identities = ["*.b.example.com"]
local_ts = ["{SUBNET_B}"]
remote_ts = ["10.200.2.0/24"]

[[gateways]]
name = "{GATEWAY2}"
id = "{GATEWAY2_ID}"
vici_socket = "tls://127.0.0.1:{relay_port}"
credentials = "agent"
groups = ["shop-a"]

[ocsp]
presign_every_seconds = 2

[server]
tls_names = ["127.0.0.1"]
"""


def load_device(lab: Lab, name: str, identity: str, gw: Charon, gateway_id: str, *, remote_ts: str = SUBNET_A,
                ike: str | None = None, esp: str | None = None) -> None:
    """A road-warrior connection `name` with a fresh device certificate of `identity`."""
    cert_der, key_der, serial = issue(lab.ca, identity, lab.base / name)
    lab.serials[name] = serial
    strong = {k: v for k, v in (("ike", ike), ("esp", esp)) if v is not None}
    with lab.rw.session() as session:
        session.load_key({"type": "any", "data": key_der})
        session.load_cert({"type": "X509", "flag": "NONE", "data": cert_der})
        load_ca_certificates(session, lab.ca)
        session.load_conn({name: road_warrior_conn(
            local=f"10.{gw.address.split('.')[1]}.0.2", remote=gw.address, identity=identity,
            gateway_id=gateway_id, cert_der=cert_der, local_ts=f"{RW_INNER}/32", remote_ts=remote_ts,
            **strong)})


def conns(charon: Charon) -> set[str]:
    with charon.session() as session:
        return {name.decode() if isinstance(name, bytes) else name
                for item in session.list_conns() for name in item}


def children(charon: Charon) -> list[dict[str, Any]]:
    return [c for sa in established(charon) for c in (sa.get("child-sas") or {}).values()]


def gateway_sa(lab: Lab, gw: Charon, name: str) -> dict[str, object] | None:
    rw_sas = [sa for sa in established(lab.rw) if sa["name"] == name]
    if not rw_sas:
        return None
    return next((sa for sa in established(gw) if sa.get("initiator-spi") == rw_sas[0]["initiator-spi"]), None)


def own_serials(charon: Charon) -> set[str]:
    with charon.session() as session:
        return {format(x509.load_der_x509_certificate(bytes(c["data"])).serial_number, "x")
                for c in session.list_certs({"type": "X509", "flag": "NONE"})
                if c.get("has_privkey", b"no") == b"yes"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    require_tool("ip")
    base = tmp_path_factory.mktemp("fleet")
    ocsp_port, relay_port = free_port(), free_port()
    ca = make_ca_home(base / "home", softhsm, http_base=f"http://127.0.0.1:{ocsp_port}")
    started = datetime.now(UTC) - timedelta(seconds=1)
    with road_warrior_and_gateways(base, 2) as (rw, (gw1, gw2)):
        run([require_tool("ip"), "-n", gw1.netns, "addr", "add", "10.200.3.1/32", "dev", "lo"])
        (ca.home / "vpnca.toml").write_text((ca.home / "vpnca.toml").read_text() + config(gw1, relay_port))
        processes: list[subprocess.Popen[bytes]] = []
        server = None
        try:
            for gw in (gw1, gw2):
                processes.append(start_ocsp_responder(ca, gw, ocsp_port, base / f"ocsp-{gw.name}.log"))
            (base / "www").mkdir()
            processes.append(subprocess.Popen(
                [require_tool("ip"), "netns", "exec", gw1.netns, sys.executable, "-m", "http.server",
                 "--bind", gw1.inner, "--directory", str(base / "www"), str(INNER_PORT)],
                stdout=(base / "inner-http.log").open("wb"), stderr=subprocess.STDOUT))
            server = start_server(ca)
            vpnca(ca, "gateway", "enroll")
            vpnca(ca, "gateway", "push")
            # gateway 2's host: its certificate from its own agent over EST, then the relay for the CA
            agent_dir = base / "gw2-agent"
            token = vpnca(ca, "token", "create", "--id", GATEWAY2_ID, "--profile", "gateway").strip()
            remember_secret(token.partition(":")[2])
            root = x509.load_pem_x509_certificate((ca.home / "ca/root.pem").read_bytes())
            enrolled = agent(base, "enroll", "--server", f"https://127.0.0.1:{server.https_port}",
                             "--ca-fingerprint", hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest(),
                             "--token", token, "--id", GATEWAY2_ID, "--profile", "gateway", "--key-type",
                             "ec-p384", "--dir", str(agent_dir), "--vici", gw2.vici_uri)
            assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
            vpnca(ca, "gateway", "relay-client", "--id", CONTROLLER_ID)
            env = {k: v for k, v in os.environ.items() if not k.startswith("VPNCA_")}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "vpnca.cli", "agent", "vici-relay", "--dir", str(agent_dir),
                 "--listen", f"127.0.0.1:{relay_port}", "--vici", gw2.vici_uri, "--allow-id", CONTROLLER_ID],
                env=env, stdout=(base / "relay.log").open("wb"), stderr=subprocess.STDOUT))
            wait_for("the relay to listen", lambda: subprocess.run(
                [require_tool("curl"), "-s", "-o", "/dev/null", f"https://127.0.0.1:{relay_port}/"],
                capture_output=True, check=False).returncode != 7, timeout=20)
            vpnca(ca, "gateway", "push", "--gateway", GATEWAY2)
            wait_for_watcher(ca, {GATEWAY_ID, GATEWAY2})  # after the first OCSP pre-signing pass
            yield Lab(base, ca, rw, gw1, gw2, server, agent_dir, started)
        finally:
            for process in reversed(processes):
                stop_process(process)
            if server is not None:
                stop_server(server)
            ca.store.dispose()


def test_each_gateway_gets_one_connection_per_group_and_the_policy_lifetimes(lab: Lab) -> None:
    assert conns(lab.gw1) == {"vpnca-shop-a", "vpnca-shop-b"}
    assert conns(lab.gw2) == {"vpnca-shop-a"}  # pushed through the relay
    rendered = vpnca(lab.ca, "gateway", "render")
    for line in ("id = *.a.example.com", "id = *.b.example.com", f"local_ts = {SUBNET_A}",
                 f"local_ts = {SUBNET_B}", "rekey_time = 9h", "rand_time = 45m", "rekey_time = 90m",
                 "rand_time = 15m", "life_time = 2h", "proposals = aes256gcm16-prfsha384-ecp384"):
        assert line in rendered, line
    second = vpnca(lab.ca, "gateway", "render", "--gateway", GATEWAY2)
    assert "vpnca-shop-a {" in second and "vpnca-shop-b {" not in second
    assert "certs = gateway.pem" not in second  # its agent loaded its own


def test_status_shows_every_gateway(lab: Lab) -> None:
    rows = {r["gateway"]: r for r in json.loads(vpnca(lab.ca, "gateway", "status", "--json"))}
    assert set(rows) == {GATEWAY_ID, GATEWAY2}
    for row in rows.values():
        assert row["reachable"] and row["tunnels_up"] == 0 and row["last_push"] and row["last_error"] is None
        assert row["serial"] and row["not_after"]
    agent_cert = x509.load_pem_x509_certificate((lab.agent_dir / "cert.pem").read_bytes())
    assert rows[GATEWAY2]["serial"] == format(agent_cert.serial_number, "x")


def test_a_client_proposing_only_weak_algorithms_is_refused(lab: Lab) -> None:
    load_device(lab, "weak-ike", DEVICE_A, lab.gw1, GATEWAY_ID, ike="aes128-sha1-modp1024")
    load_device(lab, "weak-esp", DEVICE_A, lab.gw1, GATEWAY_ID, esp="3des-sha1")
    for name in ("weak-ike", "weak-esp"):
        with pytest.raises(vici.exception.CommandException):
            initiate(lab.rw, name)
        terminate(lab.rw, name)
    assert not children(lab.gw1)
    log = lab.gw1.log()
    assert "IKE_SA_INIT response 0 [ N(NO_PROP) ]" in log, log[-3000:]  # weak IKE: refused at once
    assert "received proposals: ESP:3DES_CBC/HMAC_SHA1_96" in log and "N(NO_PROP) ]" in log


def test_a_group_device_reaches_its_groups_selector_and_is_refused_the_others(lab: Lab) -> None:
    load_device(lab, "a-ok", DEVICE_A, lab.gw1, GATEWAY_ID)
    load_device(lab, "a-to-b", DEVICE_A, lab.gw1, GATEWAY_ID, remote_ts=SUBNET_B)
    load_device(lab, "b-ok", DEVICE_B, lab.gw1, GATEWAY_ID, remote_ts=SUBNET_B)
    initiate(lab.rw, "a-ok")
    with pytest.raises(vici.exception.CommandException):
        initiate(lab.rw, "a-to-b")
    terminate(lab.rw, "a-to-b")
    initiate(lab.rw, "b-ok")
    by_ts = {tuple(ts.decode() for ts in c["local-ts"]): c for c in children(lab.gw1)}
    assert set(by_ts) == {(SUBNET_A,), (SUBNET_B,)}, by_ts
    sas = {sa["remote-id"]: sa["name"] for sa in established(lab.gw1)}
    assert sas == {DEVICE_A: "vpnca-shop-a", DEVICE_B: "vpnca-shop-b"}, sas
    log = lab.gw1.log()
    assert f"traffic selectors {SUBNET_B} === {RW_INNER}/32 unacceptable" in log and "N(TS_UNACCEPT)" in log


def test_connection_records_rekeys_traffic_and_teardown(lab: Lab) -> None:
    sa = gateway_sa(lab, lab.gw1, "a-ok")
    assert sa is not None
    up = wait_for("gateway.ike.up of a-ok", lambda: [e for e in events(lab.ca, "gateway.ike.up")
                                                     if e.get("initiator_spi") == sa["initiator-spi"]])
    assert up[0]["connection"] == "vpnca-shop-a" and up[0]["serial"] == lab.serials["a-ok"]
    # NAT-T: kernel-libipsec only does UDP-encapsulated ESP, so the road warrior fakes NAT detection
    assert up[0]["ike"]["encr_alg"] == "AES_GCM_16" and up[0]["nat"] == {"local": False, "remote": True,
                                                                         "any": True}
    rows = json.loads(vpnca(lab.ca, "sessions", "--json"))
    assert {(r["gateway"], r["identity"]) for r in rows} == {(GATEWAY_ID, DEVICE_A), (GATEWAY_ID, DEVICE_B)}
    with lab.rw.session() as session:
        session.rekey({"ike": "a-ok"})
    ike_rekeyed = wait_for("gateway.ike.rekeyed", lambda: events(lab.ca, "gateway.ike.rekeyed"))
    assert ike_rekeyed[0]["serial"] == lab.serials["a-ok"] and ike_rekeyed[0]["ike"]["dh_group"] == "ECP_384"
    # the CHILD_SA once the IKE rekey is over: while the old IKE SA is being replaced, charon finds no SA
    # to rekey under that name
    wait_for("the CHILD_SA rekey to start", lambda: rekey_child(lab.rw, "a-ok", "api"))
    rekeyed = wait_for("gateway.child.rekeyed", lambda: events(lab.ca, "gateway.child.rekeyed"))
    assert rekeyed[0]["identity"] == DEVICE_A and rekeyed[0]["esp"]["encr_alg"] == "AES_GCM_16"
    ip = require_tool("ip")
    run([ip, "-n", lab.rw.netns, "route", "replace", SUBNET_A, "dev", "ipsec0", "src", RW_INNER])
    run([ip, "-n", lab.gw1.netns, "route", "replace", "10.200.2.0/24", "dev", "ipsec0", "src", "10.200.1.1"])
    fetched = run([ip, "netns", "exec", lab.rw.netns, require_tool("curl"), "-sS", "-o", "/dev/null", "-w",
                   "%{http_code}", "--max-time", "8", "--interface", RW_INNER, f"http://10.200.1.1:{INNER_PORT}/"],
                  check=False)
    assert fetched.stdout == "200", f"no traffic through the tunnel: {fetched.stdout}{fetched.stderr}"
    terminate(lab.rw, "a-ok")
    down = wait_for("gateway.child.down with traffic", lambda: [
        e for e in events(lab.ca, "gateway.child.down")
        if e.get("identity") == DEVICE_A and (e.get("packets_in") or 0) >= 3])
    assert down[0]["bytes_in"] > 0 and down[0]["bytes_out"] > 0 and down[0]["serial"] == lab.serials["a-ok"]
    rekeyed_spi = ike_rekeyed[0]["initiator_spi"]  # the IKE SA after the rekey is the one that goes down
    ike_down = wait_for("gateway.ike.down", lambda: [e for e in events(lab.ca, "gateway.ike.down")
                                                     if e.get("initiator_spi") == rekeyed_spi])
    assert ike_down[0]["reason"] == "deleted" and ike_down[0]["serial"] == lab.serials["a-ok"]
    metrics = run([require_tool("curl"), "-sf", f"{lab.server.http}/metrics"]).stdout
    assert f'vpnca_gateway_established_total{{gateway="{GATEWAY_ID}"}}' in metrics
    assert f'vpnca_gateway_tunnels{{gateway="{GATEWAY_ID}"}}' in metrics


def rekey_child(charon: Charon, ike: str, child: str) -> bool:
    """Ask `charon` to rekey CHILD_SA `child` of IKE SA `ike`; False while it finds no such SA."""
    try:
        with charon.session() as session:
            session.rekey({"child": child, "ike": ike})
    except vici.exception.CommandException:
        return False
    return True


def test_the_evidence_pack_holds_the_connection_records_and_verifies(lab: Lab) -> None:
    pack = lab.base / "pack"
    until = datetime.now(UTC) + timedelta(seconds=1)
    vpnca(lab.ca, "audit", "export", str(pack), "--since", lab.started.isoformat(),
          "--until", until.isoformat())
    lines = (pack / "gateway/connection_records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kinds = {r["event"] for r in records}
    assert {"gateway.ike.up", "gateway.ike.rekeyed", "gateway.child.rekeyed", "gateway.child.down",
            "gateway.ike.down"} <= kinds, kinds
    assert any(r["event"] == "gateway.ike.up" and r["serial"] == lab.serials["a-ok"] for r in records)
    assert "gateway/connection_records.jsonl" in (pack / "MANIFEST.sha256").read_text()
    vpnca(lab.ca, "audit", "verify", "--pack", str(pack))


def test_both_gateways_are_renewed_and_pushed(lab: Lab) -> None:
    # gateway 1: vpnca holds its key; a new certificate is pushed by the scheduler's renewal job
    vpnca(lab.ca, "gateway", "enroll")
    renewed = x509.load_pem_x509_certificate((lab.ca.home / "gateway/gateway.pem").read_bytes())
    wait_for("the scheduler to push gateway 1's new certificate",
             lambda: format(renewed.serial_number, "x") in own_serials(lab.gw1), timeout=30)
    # gateway 2: its own agent renews and loads it into its charon; vpnca pushes through the relay again
    old = x509.load_pem_x509_certificate((lab.agent_dir / "cert.pem").read_bytes())
    result = agent(lab.base, "renew", "--force", "--dir", str(lab.agent_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    new = x509.load_pem_x509_certificate((lab.agent_dir / "cert.pem").read_bytes())
    assert new.serial_number != old.serial_number
    assert format(new.serial_number, "x") in own_serials(lab.gw2)
    vpnca(lab.ca, "gateway", "push", "--gateway", GATEWAY2)
    rows = {r["gateway"]: r for r in json.loads(vpnca(lab.ca, "gateway", "status", "--json"))}
    assert rows[GATEWAY2]["serial"] == format(new.serial_number, "x")
    assert rows[GATEWAY_ID]["serial"] == format(renewed.serial_number, "x")


def test_revocation_cuts_the_tunnel_on_the_gateway_that_holds_it(lab: Lab) -> None:
    load_device(lab, "a2", DEVICE_A2, lab.gw2, GATEWAY2_ID)
    initiate(lab.rw, "a2")  # through gateway 2 (re-using the relay-reached, agent-renewed credentials)
    doomed = gateway_sa(lab, lab.gw2, "a2")
    assert doomed is not None
    up = wait_for("gateway.ike.up at gateway 2", lambda: [
        e for e in events(lab.ca, "gateway.ike.up")
        if e.get("gateway") == GATEWAY2 and e.get("initiator_spi") == doomed["initiator-spi"]], timeout=20)
    assert up[0]["serial"] == lab.serials["a2"]
    kept = gateway_sa(lab, lab.gw1, "b-ok")
    assert kept is not None
    started = time.monotonic()
    vpnca(lab.ca, "revoke", lab.serials["a2"], "--reason", "keyCompromise")
    wait_for("gateway 2 to drop the revoked certificate's SA",
             lambda: all(sa["uniqueid"] != doomed["uniqueid"] for sa in established(lab.gw2)), timeout=5)
    latency = cut_off_seconds(lab.ca, lab.serials["a2"], GATEWAY2)
    assert latency < 5, latency
    print(f"cut-off at gateway 2 (through the relay) {latency:.2f}s after the revocation was recorded, "
          f"{time.monotonic() - started:.2f}s after `vpnca revoke` started")
    assert gateway_sa(lab, lab.gw1, "b-ok") is not None
    entries = [json.loads(e.details) for e in lab.ca.store.audit_entries()
               if e.action == "gateway.terminated"]
    assert [(e["gateway"], e["serial"]) for e in entries] == [(GATEWAY2, lab.serials["a2"])], entries
    with pytest.raises(vici.exception.CommandException):
        initiate(lab.rw, "a2")
