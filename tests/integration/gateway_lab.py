"""What the gateway tests share: running vpnca, an OCSP responder inside a gateway's namespace,
device certificates, road-warrior connections, the event log, waiting."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import vici
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import CaHome
from tests.helpers import require_tool, run
from tests.integration.strongswan import Charon

GATEWAY_ID = "vpn.example.com"
STRONG_IKE = "aes256gcm16-prfsha384-ecp384"
STRONG_ESP = "aes256gcm16-ecp384"
T = TypeVar("T")


def vpnca(ca: CaHome, *args: str, netns: str | None = None) -> str:
    prefix = [require_tool("ip"), "netns", "exec", netns] if netns else []
    return run([*prefix, sys.executable, "-m", "vpnca.cli", *args], env=ca.env).stdout


def wait_in_netns(netns: str, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited:\n{log.read_text()}")
        probe = subprocess.run([require_tool("ip"), "netns", "exec", netns, require_tool("curl"), "-sf", url],
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering in {netns}:\n{log.read_text()}")


def start_ocsp_responder(ca: CaHome, gw: Charon, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`vpnca ocsp serve` in the gateway's namespace on the AIA URL's port (charon checks peers there)."""
    responder = subprocess.Popen([require_tool("ip"), "netns", "exec", gw.netns, sys.executable, "-m",
                                  "vpnca.cli", "ocsp", "serve", "--port", str(port)], env=ca.env,
                                 stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_in_netns(gw.netns, f"http://127.0.0.1:{port}/healthz", responder, log)
    return responder


def issue(ca: CaHome, identity: str, out: Path, profile: str = "device") -> tuple[bytes, bytes, str]:
    """A certificate and key from `vpnca issue`: (certificate DER, PKCS#8 key DER, serial)."""
    cert_pem, key_pem = out.with_suffix(".pem"), out.with_suffix(".key")
    vpnca(ca, "issue", "--profile", profile, "--id", identity, "--out", str(cert_pem),
          "--key-out", str(key_pem))
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    return (cert.public_bytes(serialization.Encoding.DER),
            key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            format(cert.serial_number, "x"))


def load_ca_certificates(session: vici.Session, ca: CaHome) -> None:
    for name in ("sub.pem", "root.pem"):
        ca_cert = x509.load_pem_x509_certificate((ca.home / "ca" / name).read_bytes())
        session.load_cert({"type": "X509", "flag": "CA",
                           "data": ca_cert.public_bytes(serialization.Encoding.DER)})


def road_warrior_conn(*, local: str, remote: str, identity: str, gateway_id: str, cert_der: bytes | None,
                      local_ts: str, remote_ts: str, ike: str = STRONG_IKE,
                      esp: str = STRONG_ESP) -> dict[str, Any]:
    """A road warrior's IKEv2 connection to a gateway (`api` its CHILD SA)."""
    local_auth: dict[str, Any] = {"auth": "pubkey", "id": identity}
    if cert_der is not None:
        local_auth["certs"] = [cert_der]
    return {"version": "2", "local_addrs": [local], "remote_addrs": [remote], "proposals": [ike],
            "local": local_auth, "remote": {"auth": "pubkey", "id": gateway_id, "revocation": "relaxed"},
            "children": {"api": {"local_ts": [local_ts], "remote_ts": [remote_ts], "esp_proposals": [esp]}}}


def initiate(rw: Charon, ike: str, child: str = "api") -> None:
    with rw.session() as session:
        for _ in session.initiate({"child": child, "ike": ike, "timeout": 15000, "init-limits": False}):
            pass


def terminate(rw: Charon, ike: str) -> None:
    with rw.session() as session:
        try:
            for _ in session.terminate({"ike": ike, "timeout": 5000, "force": True}):
                pass
        except vici.exception.CommandException:
            pass


def established(charon: Charon) -> list[dict[str, Any]]:
    return [sa for sa in charon.sas() if sa.get("state") == "ESTABLISHED"]


def events(ca: CaHome, name: str) -> list[dict[str, Any]]:
    """The JSON events called `name` in the CA's event log, oldest first."""
    path = ca.home / "log" / "vpnca.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if data.get("event") == name:
            out.append(data)
    return out


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll `check` until it returns something true (a generous functional deadline, not a timing test)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cut_off_seconds(ca: CaHome, serial: str, gateway: str) -> float:
    """From the revocation's audit entry to the gateway's `gateway.terminated` entry for that serial:
    the cut-off latency itself (the `vpnca revoke` process's start-up is not part of it)."""
    revoked = terminated = None
    for entry in ca.store.audit_entries():
        details = json.loads(entry.details)
        if entry.action == "revoke" and details.get("serial") == serial:
            revoked = datetime.fromisoformat(entry.created_at)
        elif entry.action == "gateway.terminated" and details.get("serial") == serial \
                and details.get("gateway") == gateway:
            terminated = datetime.fromisoformat(entry.created_at)
    assert revoked is not None and terminated is not None, (revoked, terminated)
    return (terminated - revoked).total_seconds()


def wait_for_watcher(ca: CaHome, gateways: set[str], timeout: float = 90.0) -> None:
    """Until the scheduler's VICI watcher of each gateway has connected (its `gateway.reconciled`)."""
    wait_for("the gateway watchers", lambda: gateways <= {e.get("gateway") for e in
                                                          events(ca, "gateway.reconciled")}, timeout)
