"""EST enrollments per second over HTTPS at 1, 4 and 16 clients, beside its ceilings in the same run:
the raw PKCS#11 sign rate of the sub-CA key and the same HTTPS server answering `cacerts` (a fixed
body of about the same size: the HTTP ceiling)."""

from __future__ import annotations

import base64
import os
import ssl
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bench.common import save, table, wrk
from tests.conftest import make_ca_home, start_server, stop_server
from tests.helpers import openssl_csr, require_tool, run
from vpnca.authority import IssueRequest
from vpnca.credentials import _secret_hash
from vpnca.identities import IkeIdentity
from vpnca.store import EnrollmentToken

SECONDS = int(os.environ.get("VPNCA_BENCH_SECONDS", "8"))
CLIENTS = (1, 4, 16)
WORKERS = int(os.environ.get("VPNCA_BENCH_WORKERS", "2"))
REPEATS = int(os.environ.get("VPNCA_BENCH_REPEATS", "3"))
TOKENS_PER_RUN = 12_000  # more than a run can spend (it would need 1,500 enrollments/s for 8 s)


def raw_sign_rate(key: ec.EllipticCurvePrivateKey, seconds: float = 3.0) -> float:
    data = os.urandom(400)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        key.sign(data, ec.ECDSA(hashes.SHA384()))
        count += 1
    return count / (time.perf_counter() - start)


def make_tokens(ca, count: int, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Single-use tokens for the same identity, inserted in one go (creating them is not measured)."""
    now = datetime.now(UTC)
    credentials, rows = [], []
    for i in range(count):
        token_id, secret = f"{prefix}{i:07d}", f"s{i:07d}bench"
        rows.append(EnrollmentToken(token_id=token_id, secret_sha256=_secret_hash(secret),
                                    identities=(IkeIdentity("fqdn", "bench.example.com"),), profile="device",
                                    protocol="est", created_by="bench", created_at=now,
                                    expires_at=now + timedelta(hours=2)))
        credentials.append(base64.b64encode(f"{token_id}:{secret}".encode()).decode())
    with ca.store.write() as session:
        session.add_all(rows)
    return credentials


def wrk_script(path: Path, credentials: list[str], body: str, threads: int) -> Path:
    """Each wrk thread walks its own stride of the token list, so no token is sent twice."""
    creds = "\n".join(f'"{c}",' for c in credentials)
    path.write_text(f"""
local creds = {{ {creds} }}
local counter = 0
local body = "{body}"
function setup(thread)
  thread:set("first", counter)
  counter = counter + 1
end
function init(args)
  n = first
end
function request()
  local c = creds[n + 1]
  n = n + {threads}
  return wrk.format("POST", nil, {{["Authorization"] = "Basic " .. c,
                                   ["Content-Type"] = "application/pkcs10"}}, body)
end
""")
    return path


def wait_until_answering(url: str, timeout: float = 120) -> None:
    """The listening socket opens before the workers answer on it: wait for a first 200, so the
    first measured run does not time the workers' start-up."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def in_process_issuance_ms(ca, count: int = 200) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Milliseconds per `Authority.issue` (a new key each time): the same name again (a renewal: the kept
    lint verdict) and a new name each time (linted in full)."""
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(count)]
    figures = {}
    for case, name in (("new_name", "dev{}.example.com"), ("same_name", "renewing.example.com")):
        started = time.perf_counter()
        for i, key in enumerate(keys):
            identity = IkeIdentity("fqdn", name.format(i))
            ca.authority.issue(IssueRequest(profile="device", identities=(identity,), public_key=key,
                                            requester="bench", protocol="bench"))
        figures[f"issue_{case}_ms"] = round((time.perf_counter() - started) * 1000 / count, 2)
    return figures


def test_est_enrollment_rate(tmp_path: Path, softhsm) -> None:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path / "home", softhsm)
    sign_before = raw_sign_rate(ca.authority.key)  # type: ignore[arg-type]
    in_process = in_process_issuance_ms(ca)
    csr = openssl_csr(tmp_path, subject="/CN=bench.example.com", sans=["DNS:bench.example.com"])
    der = tmp_path / "req.der"
    run([require_tool("openssl"), "req", "-in", str(csr), "-outform", "DER", "-out", str(der)])
    body = base64.b64encode(der.read_bytes()).decode()
    # every run's single-use tokens made before any measuring, and the WAL checkpointed, so no run
    # pays for another's set-up
    tokens = {(clients, repeat): make_tokens(ca, TOKENS_PER_RUN, prefix=f"c{clients}r{repeat}-")
              for clients in CLIENTS for repeat in range(REPEATS)}
    with ca.store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    server = start_server(ca, "--workers", str(WORKERS))
    rows = []
    try:
        url = f"https://127.0.0.1:{server.https_port}/.well-known/est"
        wait_until_answering(f"{url}/cacerts")
        for clients in CLIENTS:
            ceiling = wrk(f"{url}/cacerts", connections=clients, seconds=SECONDS)
            threads = min(clients, 2)
            runs = []
            for repeat in range(REPEATS):  # this shared machine drifts: the median of a few runs
                script = wrk_script(tmp_path / f"est{clients}-{repeat}.lua", tokens[(clients, repeat)], body,
                                    threads)
                runs.append(wrk(f"{url}/simpleenroll", connections=clients, seconds=SECONDS, script=script,
                                threads=threads))
            enroll = sorted(runs, key=lambda r: r["requests_per_second"])[len(runs) // 2]
            rows.append({
                "clients": clients,
                "enroll_per_s": round(enroll["requests_per_second"], 1),
                "enroll_p50_ms": round(enroll["p50_ms"], 2), "enroll_p99_ms": round(enroll["p99_ms"], 2),
                "enroll_runs_per_s": [round(r["requests_per_second"], 1) for r in runs],
                "enroll_errors": sum(r["non_2xx"] for r in runs),
                "https_ceiling_per_s": round(ceiling["requests_per_second"], 1),
                "ceiling_p50_ms": round(ceiling["p50_ms"], 2), "ceiling_p99_ms": round(ceiling["p99_ms"], 2),
            })
    finally:
        stop_server(server)
    sign_rate = (sign_before + raw_sign_rate(ca.authority.key)) / 2  # type: ignore[arg-type]
    for row in rows:
        row["raw_sign_per_s"] = round(sign_rate, 1)
        row["enroll_vs_ceiling"] = round(row["enroll_per_s"] / row["https_ceiling_per_s"], 3)
        row["enroll_vs_raw_sign"] = round(row["enroll_per_s"] / sign_rate, 3)
    row_count = sum(1 for _ in ca.store.list_certificates(status="valid"))
    save("est", {"workers": WORKERS, "seconds": SECONDS, "repeats": REPEATS, "database": "sqlite",
                 "issued_total": row_count, "in_process": in_process, "rows": rows})
    print("in-process issuance (ms):", in_process)
    table("EST enrollment over HTTPS (wrk, keep-alive; median of the runs)", rows,
          [c for c in rows[0] if c != "enroll_runs_per_s"] + ["enroll_runs_per_s"])
    assert all(r["enroll_errors"] == 0 for r in rows)
