"""Two strongSwan charons, each in its own network namespace joined by a veth pair."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici

from tests.helpers import require_tool, run, stop_process

CHARON = "/usr/lib/ipsec/charon"


def strongswan_conf(directory: Path) -> str:
    return f"""charon {{
  load_modular = yes
  install_routes = no
  install_virtual_ip = no
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{
      socket = unix://{directory}/charon.vici
    }}
    kernel-libipsec {{
      load = yes
    }}
    tpm {{
      load = no
    }}
  }}
  filelog {{
    main {{
      path = {directory}/charon.log
      default = 1
      ike = 2
      cfg = 2
      flush_line = yes
    }}
  }}
}}
"""


@dataclass
class Charon:
    name: str
    netns: str
    directory: Path
    address: str
    inner: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def vici_uri(self) -> str:
        return f"unix://{self.directory}/charon.vici"

    def start(self) -> None:
        if not os.access(CHARON, os.X_OK):
            raise AssertionError(f"{CHARON} is missing: install strongswan-charon")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "strongswan.conf").write_text(strongswan_conf(self.directory))
        env = {**os.environ, "STRONGSWAN_CONF": str(self.directory / "strongswan.conf")}
        self.process = subprocess.Popen(
            [require_tool("ip"), "netns", "exec", self.netns, require_tool("unshare"), "-m", "sh", "-c",
             f"mount -t tmpfs tmpfs /run && exec {CHARON}"],
            env=env, stdout=(self.directory / "stdout.log").open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (self.directory / "charon.vici").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"charon {self.name} did not start:\n{self.log()}")
            time.sleep(0.1)

    @contextmanager
    def session(self) -> Iterator[vici.Session]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.directory / "charon.vici"))
        try:
            yield vici.Session(sock)
        finally:
            sock.close()

    def sas(self) -> list[dict[str, Any]]:
        with self.session() as session:
            return [{"name": name, **{k: (v.decode() if isinstance(v, bytes) else v) for k, v in sa.items()}}
                    for item in session.list_sas() for name, sa in item.items()]

    def cert_serials(self) -> list[str]:
        from cryptography import x509

        with self.session() as session:
            return [format(x509.load_der_x509_certificate(bytes(c["data"])).serial_number, "x")
                    for c in session.list_certs({"type": "X509", "flag": "NONE"})]

    def log(self) -> str:
        path = self.directory / "charon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@contextmanager
def two_hosts(base: Path) -> Iterator[tuple[Charon, Charon]]:
    """A gateway and a road warrior: namespaces, a veth pair, inner addresses on lo, a charon each."""
    ip = require_tool("ip")
    tag = secrets.token_hex(3)
    gw = Charon("gateway", f"vpnca-gw-{tag}", base / "gw", "10.99.0.1", "10.200.1.1")
    rw = Charon("roadwarrior", f"vpnca-rw-{tag}", base / "rw", "10.99.0.2", "10.200.2.1")
    created: list[str] = []
    try:
        for host in (gw, rw):
            run([ip, "netns", "add", host.netns])
            created.append(host.netns)
            run([ip, "-n", host.netns, "link", "set", "lo", "up"])
            run([ip, "-n", host.netns, "addr", "add", f"{host.inner}/32", "dev", "lo"])
        run([ip, "link", "add", f"vg{tag}", "netns", gw.netns, "type", "veth", "peer", "name", f"vr{tag}",
             "netns", rw.netns])
        for host, dev in ((gw, f"vg{tag}"), (rw, f"vr{tag}")):
            run([ip, "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", dev])
            run([ip, "-n", host.netns, "link", "set", dev, "up"])
        gw.start()
        rw.start()
        yield gw, rw
    finally:
        for host in (gw, rw):
            host.stop()
        for netns in created:
            subprocess.run([ip, "netns", "del", netns], capture_output=True, check=False)


@contextmanager
def road_warrior_and_gateways(base: Path, count: int) -> Iterator[tuple[Charon, list[Charon]]]:
    """A road warrior joined to `count` gateways, one veth pair (and /24) each: gateway i is
    10.(99-i).0.1, the road warrior 10.(99-i).0.2; inner addresses 10.200.2.1 (road warrior) and
    10.200.1.1 (each gateway)."""
    ip = require_tool("ip")
    tag = secrets.token_hex(3)
    rw = Charon("roadwarrior", f"vpnca-rw-{tag}", base / "rw", "10.99.0.2", "10.200.2.1")
    gws = [Charon(f"gateway{i + 1}", f"vpnca-gw{i + 1}-{tag}", base / f"gw{i + 1}", f"10.{99 - i}.0.1",
                  "10.200.1.1") for i in range(count)]
    created: list[str] = []
    try:
        for host in (rw, *gws):
            run([ip, "netns", "add", host.netns])
            created.append(host.netns)
            run([ip, "-n", host.netns, "link", "set", "lo", "up"])
            run([ip, "-n", host.netns, "addr", "add", f"{host.inner}/32", "dev", "lo"])
        for i, gw in enumerate(gws):
            gw_dev, rw_dev = f"vg{i}{tag}", f"vr{i}{tag}"
            run([ip, "link", "add", gw_dev, "netns", gw.netns, "type", "veth", "peer", "name", rw_dev,
                 "netns", rw.netns])
            rw_address = f"10.{99 - i}.0.2"
            for netns, dev, address in ((gw.netns, gw_dev, gw.address), (rw.netns, rw_dev, rw_address)):
                run([ip, "-n", netns, "addr", "add", f"{address}/24", "dev", dev])
                run([ip, "-n", netns, "link", "set", dev, "up"])
        for host in (*gws, rw):
            host.start()
        yield rw, gws
    finally:
        for host in (rw, *gws):
            host.stop()
        for netns in created:
            subprocess.run([ip, "netns", "del", netns], capture_output=True, check=False)
