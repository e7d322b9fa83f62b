"""`vpnca agent` on a road warrior: two charons in network namespaces; the gateway's credentials from the
CA (`vpnca gateway enroll` + push), the road warrior's ONLY from `vpnca agent enroll` (run as a process
with no VPNCA_HOME), its key in a file or on its own SoftHSM token. The agent renews twice at 2/3 of a
2-minute lifetime, loads each certificate into the road warrior's charon over VICI, new IKE SAs
authenticate with it, and the tunnel carries traffic after the first certificate has expired."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hsm.softhsm import DEFAULT_MODULE, SoftHsmToken
from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import free_port, remember_secret, require_tool, run, stop_process
from tests.integration import strongswan
from tests.integration.gateway_lab import (
    GATEWAY_ID,
    established,
    initiate,
    start_ocsp_responder,
    terminate,
    vpnca,
)
from tests.integration.strongswan import Charon, two_hosts

CLIENT_ID = "rw.example.com"
LIFETIME_SECONDS = 120
INNER_PORT = 8000  # an HTTP server on the gateway's inner address, reached through the tunnel
SERVER_NAMES = '\n[server]\ntls_names = ["127.0.0.1"]\n'  # the agent connects to https://127.0.0.1:PORT


@dataclass
class Lab:
    base: Path
    ca: CaHome
    gw: Charon
    rw: Charon
    est: RunningServer
    key_kind: str
    agent_env: dict[str, str]
    pkcs11: list[str]  # the enroll options of a key on the agent's token


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """An endpoint: no VPNCA_HOME, no CA database, no CA token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPNCA_") and k != "SOFTHSM2_CONF"}
    return {**env, **(extra or {})}


def agent(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """`vpnca agent ...` as the endpoint runs it (in a directory without a .vpnca of its own)."""
    return subprocess.run([sys.executable, "-m", "vpnca.cli", "agent", *args], env=lab.agent_env,
                          cwd=lab.base, capture_output=True, text=True, timeout=180, check=False)


def root_fingerprint(ca: CaHome) -> str:
    root = x509.load_pem_x509_certificate((ca.home / "ca/root.pem").read_bytes())
    return hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()


def new_token(ca: CaHome, identity: str = CLIENT_ID) -> str:
    credential = vpnca(ca, "token", "create", "--id", identity).strip()
    remember_secret(credential.partition(":")[2])
    return credential


def init_agent_token(softhsm: SoftHsmToken, base: Path) -> tuple[str, Path]:
    """The road warrior's own token (its own label and PIN) beside the CA's test token, so that charon and
    the agent see it through the same SOFTHSM2_CONF."""
    label = f"agent-{secrets.token_hex(3)}"
    pin = remember_secret(secrets.token_hex(8))
    pin_file = base / "agent-token-pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    run([require_tool("softhsm2-util"), "--init-token", "--free", "--label", label, "--so-pin",
         secrets.token_hex(8), "--pin", pin], env={**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)})
    return label, pin_file


def token_private_keys(lab: Lab) -> list[list[object]]:
    """(label, extractable, sensitive) of each private key on the agent's token, read in another process."""
    code = ("import json, sys, pkcs11; from pkcs11 import Attribute as A, ObjectClass; "
            "t = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]); "
            "s = t.open(user_pin=open(sys.argv[3]).read().strip()); "
            "print(json.dumps([[k[A.LABEL], k[A.EXTRACTABLE], k[A.SENSITIVE]] "
            "for k in s.get_objects({A.CLASS: ObjectClass.PRIVATE_KEY})]))")
    options = dict(zip(lab.pkcs11[::2], lab.pkcs11[1::2], strict=True))
    result = run([sys.executable, "-c", code, options["--pkcs11-module"], options["--token-label"],
                  options["--pin-file"]], env=lab.agent_env)
    return list(json.loads(result.stdout))


def load_conn(rw: Charon, gw: Charon) -> None:
    """The road warrior's connection: no certificate pinned, charon picks the newest for CLIENT_ID."""
    with rw.session() as session:
        session.load_conn({"home": {
            "version": "2", "local_addrs": [rw.address], "remote_addrs": [gw.address],
            "proposals": ["aes256gcm16-prfsha384-ecp384"],
            "local": {"auth": "pubkey", "id": CLIENT_ID},
            "remote": {"auth": "pubkey", "id": GATEWAY_ID, "revocation": "relaxed"},
            "children": {"api": {"local_ts": ["10.200.2.0/24"], "remote_ts": ["10.200.1.0/24"],
                                 "esp_proposals": ["aes256gcm16-ecp384"]}},
        }})


def traffic_through_tunnel(lab: Lab) -> None:
    """An HTTP request from the road warrior's inner address to a server on the gateway's, through
    kernel-libipsec's TUN devices (routed there by hand: install_routes = no)."""
    ip = require_tool("ip")
    for host, remote in ((lab.rw, "10.200.1.0/24"), (lab.gw, "10.200.2.0/24")):
        run([ip, "-n", host.netns, "route", "replace", remote, "dev", "ipsec0", "src", host.inner])
    result = run([ip, "netns", "exec", lab.rw.netns, require_tool("curl"), "-sS", "-o", "/dev/null",
                  "-w", "%{http_code}", "--max-time", "8", "--interface", lab.rw.inner,
                  f"http://{lab.gw.inner}:{INNER_PORT}/"], check=False)
    assert result.stdout == "200", f"no traffic through the tunnel:\n{result.stdout}{result.stderr}"


def with_pkcs11_plugin(module: str) -> object:
    plain = strongswan.strongswan_conf

    def conf(directory: Path) -> str:
        return plain(directory) + ("charon {\n  plugins {\n    pkcs11 {\n      modules {\n        agent {\n"
                                   f"          path = {module}\n        }}\n      }}\n    }}\n  }}\n}}\n")
    return conf


@pytest.fixture(scope="module", params=["file", "pkcs11"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        softhsm: SoftHsmToken) -> Iterator[Lab]:
    require_tool("ip")
    kind = str(request.param)
    base = tmp_path_factory.mktemp(f"agent-{kind}")
    ocsp_port = free_port()
    ca = make_ca_home(base / "home", softhsm, http_base=f"http://127.0.0.1:{ocsp_port}")
    pkcs11: list[str] = []
    env = agent_env()
    if kind == "pkcs11":
        label, pin_file = init_agent_token(softhsm, base)
        pkcs11 = ["--pkcs11-module", DEFAULT_MODULE, "--token-label", label, "--pin-file", str(pin_file)]
        env = agent_env({"SOFTHSM2_CONF": str(softhsm.conf)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(strongswan, "strongswan_conf", with_pkcs11_plugin(DEFAULT_MODULE))
        hosts = two_hosts(base)
        gw, rw = hosts.__enter__()
    try:
        config = ca.home / "vpnca.toml"
        device = f"[profiles.device]\nlifetime_seconds = {LIFETIME_SECONDS}"
        config.write_text(config.read_text().replace("[profiles.device]\nlifetime_days = 7", device)
                          + f'\n[gateway]\nid = "{GATEWAY_ID}"\nvici_socket = "{gw.vici_uri}"\n'
                          + 'local_ts = ["10.200.1.0/24"]\nremote_ts = ["10.200.2.0/24"]\n'
                          + "\n[ocsp]\npresign_every_seconds = 2\n" + SERVER_NAMES)
        responder = start_ocsp_responder(ca, gw, ocsp_port, base / "ocsp.log")
        (base / "www").mkdir()
        inner_server = subprocess.Popen(
            [require_tool("ip"), "netns", "exec", gw.netns, sys.executable, "-m", "http.server", "--bind",
             gw.inner, "--directory", str(base / "www"), str(INNER_PORT)],
            stdout=(base / "inner-http.log").open("wb"), stderr=subprocess.STDOUT)
        est = start_server(ca)
        scheduler = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "-v", "scheduler"], env=ca.env,
                                     stdout=(base / "scheduler.log").open("wb"), stderr=subprocess.STDOUT)
        try:
            vpnca(ca, "gateway", "enroll")
            vpnca(ca, "gateway", "push")
            yield Lab(base, ca, gw, rw, est, kind, env, pkcs11)
        finally:
            stop_process(scheduler)
            stop_server(est)
            stop_process(responder)
            stop_process(inner_server)
            ca.store.dispose()
    finally:
        hosts.__exit__(None, None, None)


def test_agent_keeps_the_tunnel_up_across_renewals(lab: Lab) -> None:
    directory = lab.base / "agent"
    started = time.monotonic()
    enrolled = agent(lab, "enroll", "--server", f"https://127.0.0.1:{lab.est.https_port}",
                     "--ca-fingerprint", root_fingerprint(lab.ca), "--token", new_token(lab.ca),
                     "--id", CLIENT_ID,
                     "--dir", str(directory), "--vici", lab.rw.vici_uri, *lab.pkcs11)
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    outcome = json.loads(enrolled.stdout.strip().splitlines()[-1])
    first = outcome["serial"]
    assert outcome["event"] == "agent.enrolled" and outcome["reloaded"] == ["vici"]
    assert first in lab.rw.cert_serials()
    if lab.key_kind == "file":
        assert (directory / "key.pem").stat().st_mode & 0o777 == 0o600
    else:
        assert not (directory / "key.pem").exists()  # the key is on the token
    first_not_after = datetime.fromisoformat(outcome["not_after"])

    load_conn(lab.rw, lab.gw)
    time.sleep(3)  # the scheduler pre-signs the new certificate's OCSP answer
    initiate(lab.rw, "home")
    assert established(lab.gw), lab.gw.log()[-3000:]
    traffic_through_tunnel(lab)

    log = lab.base / "agent-run.log"
    daemon = subprocess.Popen([sys.executable, "-m", "vpnca.cli", "agent", "run", "--dir", str(directory),
                               "--check-every", "2"], env=lab.agent_env, cwd=lab.base,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    seen = [first]
    try:
        deadline = time.monotonic() + 2.2 * LIFETIME_SECONDS
        while len(seen) < 3 or datetime.now(UTC) <= first_not_after:
            assert daemon.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"renewed {seen}:\n{log.read_text()[-3000:]}"
            state = json.loads((directory / "state.json").read_text())
            loaded = state["loaded_serial"]
            if loaded and loaded not in seen:
                seen.append(loaded)
                ike_before = {sa["uniqueid"] for sa in established(lab.gw)}
                assert loaded in lab.rw.cert_serials()  # `swanctl --list-certs` over its VICI socket
                assert ike_before and ike_before <= {sa["uniqueid"] for sa in established(lab.gw)}
                time.sleep(3)  # OCSP pre-signing of the new certificate
                terminate(lab.rw, "home")
                # a new IKE SA: the old key is unloaded, so it is the new certificate's
                initiate(lab.rw, "home")
                assert established(lab.gw), lab.gw.log()[-3000:]
                traffic_through_tunnel(lab)
            time.sleep(1)
        # the first certificate has expired: a new IKE SA still authenticates, traffic still flows
        terminate(lab.rw, "home")
        initiate(lab.rw, "home")
        assert established(lab.gw), lab.gw.log()[-3000:]
        traffic_through_tunnel(lab)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    events = [json.loads(line)["event"] for line in (directory / "agent.jsonl").read_text().splitlines()]
    assert events.count("agent.renewed") >= 2 and "agent.renewal_failed" not in events
    status = agent(lab, "status", "--dir", str(directory), "--json")
    report = json.loads(status.stdout)
    assert report["serial"] == report["loaded_serial"] == seen[-1] and report["last_error"] is None
    assert not (directory / "key.pem.prev").exists() and not (directory / "cert.pem.prev").exists()
    if lab.key_kind == "pkcs11":  # one key pair left on the token, the current one, never extractable
        assert token_private_keys(lab) == [[report["key"]["label"], False, True]]
    print(f"{lab.key_kind}: serials {seen} in {time.monotonic() - started:.0f} s")
