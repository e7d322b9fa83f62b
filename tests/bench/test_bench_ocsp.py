"""OCSP requests/s and p50/p99 with wrk at 1,000 and 100,000 certificates, beside `openssl ocsp -index`
answering for the same certificates and nginx serving one pre-signed response as a static file (the
HTTP ceiling here). CRL generation and revocation latency: test_bench_revocation.py."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import insert

from ocsp.responses import IssuerHashes
from ocsp.service import load_ocsp_service
from tests.bench.common import hey, save, table, wrk
from tests.conftest import CaHome, RunningServer, make_ca_home, stop_server, wait_for_port
from tests.helpers import free_port, require_tool, run
from vpnca.ceremony import build_ocsp_signer
from vpnca.config import CrlSettings
from vpnca.crlshards import shard_for
from vpnca.store import CertificateRecord
from vpnca.x509util import crl_entry_der

SECONDS = int(os.environ.get("VPNCA_BENCH_SECONDS", "8"))
CONNECTIONS = 16
WORKERS = int(os.environ.get("VPNCA_BENCH_WORKERS", "2"))
SAMPLE = 2000  # distinct requests the load generator cycles through


def add_certificates(ca: CaHome, count: int, *, revoked_every: int = 10, status_all: str | None = None,
                     crl: CrlSettings | None = None) -> list[int]:
    """Rows for `count` certificates (no DER: OCSP and CRLs need serial and status only). Revoked rows
    carry their CRL entry as a revoke writes it; with `crl`, rows expire over the next week and carry
    the CRL shard that expiry gives."""
    now = datetime.now(UTC)
    serials: list[int] = []
    rows: list[dict[str, object]] = []
    for i in range(count):
        serial = secrets.randbits(127) | (1 << 126)
        revoked = status_all == "revoked" or (status_all is None and i % revoked_every == 0)
        not_after = now + (timedelta(days=7) if crl is None else timedelta(days=1, seconds=i % (6 * 86400)))
        serials.append(serial)
        rows.append({"serial": format(serial, "x"), "issuer": ca.settings.ca.name, "profile": "device",
                     "subject": f"CN=bench{i}", "identities": (),
                     "status": "revoked" if revoked else "valid",
                     "not_before": now, "not_after": not_after, "requester": "bench",
                     "protocol": "bench", "created_at": now, "revoked_at": now if revoked else None,
                     "revocation_reason": "keyCompromise" if revoked else None,
                     "crl_entry": crl_entry_der(serial, now, "keyCompromise") if revoked else None,
                     "crl_shard": shard_for(crl, not_after) if crl is not None else None})
        if len(rows) == 50_000:
            _insert(ca, rows)
            rows = []
    _insert(ca, rows)
    return serials


def _insert(ca: CaHome, rows: list[dict[str, object]]) -> None:
    if rows:
        with ca.store.write() as session:
            session.execute(insert(CertificateRecord), rows)


def get_paths(ca: CaHome, serials: list[int]) -> list[str]:
    issuer = x509.load_pem_x509_certificate((ca.home / "ca/sub.pem").read_bytes())
    name_hash, key_hash = IssuerHashes.of(issuer).by_algorithm["sha1"]
    paths = []
    for serial in serials:
        der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1()) \
            .build().public_bytes(serialization.Encoding.DER)
        paths.append("/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe=""))
    return paths


def lua_get(path: Path, paths: list[str]) -> Path:
    listing = ",\n".join(f'"{p}"' for p in paths)
    path.write_text(f"""
local paths = {{ {listing} }}
local i = 0
function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
""")
    return path


def start(cmd: list[str], env: dict[str, str], port: int, log: Path, ready_line: str | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a server; wait for its port, or for `ready_line` in its log where a probe would hang it
    (`openssl ocsp -port` blocks for good on a connection closed without a request)."""
    process = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    if ready_line is None:
        wait_for_port(port, process, log)
        return process
    deadline = time.monotonic() + 30
    while ready_line not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{cmd[0]} did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process


def openssl_responder(ca: CaHome, tmp: Path, serials: list[int],
                      statuses: dict[int, str]) -> tuple[list[str], dict[str, Any]]:
    """An `openssl ocsp -index` responder for the same certificates, with a software signer."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_ocsp_signer(settings=ca.settings, public_key=key.public_key(), issuer=ca.hierarchy.sub,
                             issuer_key=ca.authority.key)
    (tmp / "osigner.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "osigner.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    expiry = (datetime.now(UTC) + timedelta(days=7)).strftime("%y%m%d%H%M%SZ")
    revoked_at = datetime.now(UTC).strftime("%y%m%d%H%M%SZ")
    with (tmp / "index.txt").open("w") as index:
        for serial in serials:
            if statuses[serial] == "revoked":
                index.write(f"R\t{expiry}\t{revoked_at},keyCompromise\t{serial:X}\tunknown\t/CN=b\n")
            else:
                index.write(f"V\t{expiry}\t\t{serial:X}\tunknown\t/CN=b\n")
    (tmp / "index.txt.attr").write_text("unique_subject = no\n")
    port = free_port()
    cmd = [require_tool("openssl"), "ocsp", "-index", str(tmp / "index.txt"), "-port", str(port),
           "-rsigner", str(tmp / "osigner.pem"), "-rkey", str(tmp / "osigner.key"),
           "-CA", str(ca.home / "ca/sub.pem"), "-nmin", "60"]
    return cmd, {"port": port}


def nginx_ceiling(tmp: Path, response: bytes) -> tuple[list[str], int]:
    """nginx at its best serving `response` as a static file for any path: open_file_cache keeps the
    file open (no open/fstat/close per request), the fastest of the settings tried here."""
    root = tmp / "nginx"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "resp.der").write_bytes(response)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # else its workers (nobody) cannot read pytest's tmp
    (root / "nginx.conf").write_text(f"""{user}
worker_processes {WORKERS};
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  open_file_cache max=16;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ default_type application/ocsp-response; try_files /resp.der =404; }}
  }}
}}
""")
    return [require_tool("nginx"), "-p", str(root), "-c", str(root / "nginx.conf")], port


def measure_ocsp(ca: CaHome, tmp: Path, count: int) -> dict[str, object]:
    serials = add_certificates(ca, count)
    statuses = {s: ("revoked" if i % 10 == 0 else "valid") for i, s in enumerate(serials)}
    service = load_ocsp_service(ca.settings, ca.store)
    started = time.perf_counter()
    presigned = service.presign_backlog(batch=2000)
    presign_seconds = time.perf_counter() - started
    sample = [serials[i] for i in sorted(secrets.SystemRandom().sample(range(count), min(SAMPLE, count)))]
    script = lua_get(tmp / f"ocsp{count}.lua", get_paths(ca, sample))
    row: dict[str, Any] = {"certificates": count, "presigned": presigned,
                           "presign_per_s": round(presigned / presign_seconds, 1)}

    one_path = get_paths(ca, sample[:1])[0]
    port = free_port()
    ours = start([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port), "--workers",
                  str(WORKERS)], ca.env, port, tmp / f"ours{count}.log")
    try:
        wrk(f"http://127.0.0.1:{port}", connections=CONNECTIONS, seconds=2, script=script)  # warm-up
        result = wrk(f"http://127.0.0.1:{port}", connections=CONNECTIONS, seconds=SECONDS, script=script)
        same = hey(f"http://127.0.0.1:{port}{one_path}", connections=CONNECTIONS, seconds=SECONDS)
    finally:
        stop_server(RunningServer(ca, 0, port, ours, tmp / "x"))
    row.update({"vpnca_wrk_rps": round(result["requests_per_second"], 1),
                "vpnca_wrk_p50_ms": round(result["p50_ms"], 2),
                "vpnca_wrk_p99_ms": round(result["p99_ms"], 2),
                "vpnca_errors": result["non_2xx"] + same["non_2xx"],
                "vpnca_hey_rps": round(same["requests_per_second"], 1),
                "vpnca_hey_p99_ms": round(same["p99_ms"], 2)})

    cmd, info = openssl_responder(ca, tmp, serials, statuses)
    proc = start(cmd, os.environ.copy(), info["port"], tmp / f"openssl{count}.log",
                 ready_line="waiting for OCSP client connections")
    try:  # openssl's responder reads the request from the whole path after "/" and closes each connection
        theirs = hey(f"http://127.0.0.1:{info['port']}{one_path[len('/ocsp'):]}", connections=CONNECTIONS,
                     seconds=SECONDS)
    finally:
        proc.terminate()
        proc.wait()
    row.update({"openssl_hey_rps": round(theirs["requests_per_second"], 1),
                "openssl_hey_p50_ms": round(theirs["p50_ms"], 2),
                "openssl_hey_p99_ms": round(theirs["p99_ms"], 2),
                "openssl_ok": theirs["ok"]})

    presigned_one = service.respond(base64.b64decode(urllib.parse.unquote(one_path[len("/ocsp/"):])))
    cmd, nginx_port = nginx_ceiling(tmp / f"n{count}", presigned_one.body)
    proc = start(cmd, os.environ.copy(), nginx_port, tmp / f"nginx{count}.log")
    try:
        nginx_url = f"http://127.0.0.1:{nginx_port}"
        ceiling = wrk(nginx_url, connections=CONNECTIONS, seconds=SECONDS, script=script)
        ceiling_hey = hey(nginx_url + one_path, connections=CONNECTIONS, seconds=SECONDS)
    finally:
        proc.terminate()
        proc.wait()
    assert ceiling["non_2xx"] == 0 and ceiling_hey["non_2xx"] == 0, "nginx did not serve the answer"
    row.update({"nginx_wrk_rps": round(ceiling["requests_per_second"], 1),
                "nginx_wrk_p99_ms": round(ceiling["p99_ms"], 2),
                "nginx_hey_rps": round(ceiling_hey["requests_per_second"], 1)})
    row["vs_openssl_hey"] = round(row["vpnca_hey_rps"] / max(row["openssl_hey_rps"], 0.1), 2)
    row["vs_nginx_wrk"] = round(row["vpnca_wrk_rps"] / row["nginx_wrk_rps"], 3)
    row["vs_nginx_hey"] = round(row["vpnca_hey_rps"] / row["nginx_hey_rps"], 3)
    return row


def test_ocsp_throughput(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for count in (1_000, 100_000):
        ca = make_ca_home(tmp_path / f"home{count}", softhsm)
        rows.append(measure_ocsp(ca, tmp_path, count))
        ca.store.dispose()
    save("ocsp", {"connections": CONNECTIONS, "workers": WORKERS, "seconds": SECONDS, "rows": rows})
    table(f"OCSP GET, wrk -c {CONNECTIONS}, {WORKERS} workers each", rows, list(rows[0]))
    assert all(r["vpnca_errors"] == 0 for r in rows)


def openssl_gencrl_seconds(ca: CaHome, tmp: Path, serials: list[int]) -> float:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(ca.hierarchy.sub.subject)
            .issuer_name(ca.hierarchy.sub.subject).public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA384()))
    d = tmp / "openssl-ca"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    stamp = now.strftime("%y%m%d%H%M%SZ")
    expiry = (now + timedelta(days=7)).strftime("%y%m%d%H%M%SZ")
    with (d / "index.txt").open("w") as index:
        for serial in serials:
            index.write(f"R\t{expiry}\t{stamp},keyCompromise\t{serial:X}\tunknown\t/CN=b\n")
    (d / "index.txt.attr").write_text("unique_subject = no\n")
    (d / "crlnumber").write_text("01\n")
    (d / "ca.cnf").write_text(f"""[ca]
default_ca = bench
[bench]
database = {d}/index.txt
crlnumber = {d}/crlnumber
certificate = {d}/ca.pem
private_key = {d}/ca.key
default_md = sha384
default_crl_days = 1
""")
    started = time.perf_counter()
    run([require_tool("openssl"), "ca", "-config", str(d / "ca.cnf"), "-gencrl", "-out", str(d / "crl.pem")])
    return time.perf_counter() - started


TAIL_CERTIFICATES = int(os.environ.get("VPNCA_BENCH_TAIL_CERTS", "100000"))


class Neighbour:
    """A CPU-bound process pinned to one core (`openssl speed` in a loop) for the length of a `with`."""

    def __init__(self, core: int = 0) -> None:
        self.cmd = [require_tool("taskset"), "-c", str(core), "sh", "-c",
                    f"while :; do {require_tool('openssl')} speed -seconds 1 sha256 >/dev/null 2>&1; done"]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Neighbour:
        self.process = subprocess.Popen(self.cmd, start_new_session=True)
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, 15)
        self.process.wait()


def warm_up(url: str, script: Path) -> None:
    """Until both workers answer: the port is open (the parent binds it) before they have started."""
    deadline = time.monotonic() + 120
    while wrk(url, connections=CONNECTIONS, seconds=2, script=script)["requests"] < 1000:
        assert time.monotonic() < deadline, "the responder did not start answering"
    wrk(url, connections=CONNECTIONS, seconds=2, script=script)


def test_ocsp_tail_latency(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    """p50/p99 and rate beside nginx at 16 and 64 connections, alone and with a CPU-bound neighbour
    on one core; each pair measured back to back, every run reported."""
    ca = make_ca_home(tmp_path / "tail", softhsm)
    serials = add_certificates(ca, TAIL_CERTIFICATES)
    load_ocsp_service(ca.settings, ca.store).presign_backlog(batch=2000)
    sample = [serials[i] for i in sorted(secrets.SystemRandom().sample(range(len(serials)),
                                                                       min(SAMPLE, len(serials))))]
    paths = get_paths(ca, sample)
    script = lua_get(tmp_path / "tail.lua", paths)
    one = load_ocsp_service(ca.settings, ca.store).respond(
        base64.b64decode(urllib.parse.unquote(paths[0][len("/ocsp/"):]))).body
    port = free_port()
    ours = start([sys.executable, "-m", "vpnca.cli", "ocsp", "serve", "--port", str(port), "--workers",
                  str(WORKERS)], ca.env, port, tmp_path / "ours.log")
    cmd, nginx_port = nginx_ceiling(tmp_path / "nginx", one)
    nginx = start(cmd, os.environ.copy(), nginx_port, tmp_path / "nginx.log")
    rows = []
    try:
        warm_up(f"http://127.0.0.1:{port}", script)
        for neighbour in (False, True):
            for connections in (16, 64):
                with Neighbour() if neighbour else contextlib.nullcontext():
                    mine = wrk(f"http://127.0.0.1:{port}", connections=connections, seconds=SECONDS,
                               script=script)
                    theirs = wrk(f"http://127.0.0.1:{nginx_port}", connections=connections,
                                 seconds=SECONDS, script=script)  # the same requests
                rows.append(_tail_row(connections, neighbour, mine, theirs))
    finally:
        stop_server(RunningServer(ca, 0, port, ours, tmp_path / "x"))
        nginx.terminate()
        nginx.wait()
        ca.store.dispose()
    save("ocsp-tail", {"workers": WORKERS, "seconds": SECONDS, "certificates": TAIL_CERTIFICATES,
                       "rows": rows})
    table(f"OCSP GET beside nginx, {WORKERS} workers each, with and without a CPU-bound neighbour", rows,
          list(rows[0]))
    assert all(r["vpnca_errors"] == 0 and r["nginx_errors"] == 0 for r in rows)


def _tail_row(connections: int, neighbour: bool, mine: dict[str, Any], theirs: dict[str, Any]
              ) -> dict[str, object]:
    return {"connections": connections, "neighbour": neighbour,
            "vpnca_rps": round(mine["requests_per_second"], 1), "vpnca_p50_ms": round(mine["p50_ms"], 2),
            "vpnca_p99_ms": round(mine["p99_ms"], 2), "nginx_rps": round(theirs["requests_per_second"], 1),
            "nginx_p50_ms": round(theirs["p50_ms"], 2), "nginx_p99_ms": round(theirs["p99_ms"], 2),
            "rate_vs_nginx": round(mine["requests_per_second"] / theirs["requests_per_second"], 2),
            "p99_vs_nginx": round(mine["p99_ms"] / max(theirs["p99_ms"], 0.01), 2),
            "vpnca_errors": mine["non_2xx"], "nginx_errors": theirs["non_2xx"]}
