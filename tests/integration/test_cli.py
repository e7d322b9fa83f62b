"""The `vpnca` command as an operator runs it."""

import json
import os
import sqlite3
import sys
from pathlib import Path

from tests.conftest import CaHome
from tests.helpers import openssl_csr, require_tool, run
from vpnca.files import restrict_state_files

VPNCA = [sys.executable, "-m", "vpnca.cli"]


def vpnca(ca: CaHome, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run([*VPNCA, *args], env=ca.env, check=check)


def test_init_from_scratch_with_a_development_softhsm_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "VPNCA_PIN", "VPNCA_PIN_FILE")}
    env["VPNCA_HOME"] = str(tmp_path / "fresh")
    out = run([*VPNCA, "init", "--softhsm", "--domain", "corp.example", "--ip-range", "10.8.0.0/16"], env=env)
    assert "sub-CA" in out.stdout
    assert (tmp_path / "fresh/softhsm/tokens").is_dir()
    assert oct((tmp_path / "fresh/softhsm/pin").stat().st_mode & 0o777) == "0o600"
    run([*VPNCA, "issue", "--profile", "gateway", "--id", "vpn.corp.example", "--id", "10.8.0.1",
         "--out", str(tmp_path / "gw.pem"), "--key-out", str(tmp_path / "gw.key")], env=env)
    run([require_tool("openssl"), "verify", "-CAfile", str(tmp_path / "fresh/ca/root.pem"),
         "-untrusted", str(tmp_path / "fresh/ca/sub.pem"), str(tmp_path / "gw.pem")])
    status = json.loads(run([*VPNCA, "status", "--json"], env=env).stdout)
    assert status["token"]["ok"] and status["certificates"] == {"valid": 1} and status["audit"]["ok"]
    again = run([*VPNCA, "init"], env=env, check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    # the state (the database holds EAB HMAC keys) is nothing for other users
    home = tmp_path / "fresh"
    state = [home / "vpnca.toml", home / "vpnca.db", *(home / "log").glob("*")]
    assert state and all(path.stat().st_mode & 0o007 == 0 for path in state), \
        {str(p): oct(p.stat().st_mode & 0o777) for p in state}


def test_serve_tightens_the_state_files_of_an_older_deployment(tmp_path: Path) -> None:
    home = tmp_path / "old"
    (home / "log").mkdir(parents=True)
    files = [home / "vpnca.toml", home / "vpnca.db", home / "vpnca.db-wal", home / "log" / "vpnca.jsonl"]
    for path in files:
        path.write_text("x")
        path.chmod(0o666)
    changed = restrict_state_files(home, f"sqlite:///{home / 'vpnca.db'}")
    assert sorted(changed) == sorted(files)
    assert all(path.stat().st_mode & 0o777 == 0o640 for path in files)


def test_issue_with_generated_key_then_list_show_revoke(ca_home: CaHome, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    out = vpnca(ca_home, "issue", "--profile", "gateway", "--id", "vpn.example.com", "--out", str(cert),
                "--key-out", str(key))
    serial = out.stdout.strip()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    openssl = require_tool("openssl")
    run([openssl, "verify", "-CAfile", str(ca_home.home / "ca/root.pem"),
         "-untrusted", str(ca_home.home / "ca/sub.pem"), str(cert)])
    # the key written matches the certificate
    cert_pub = run([openssl, "x509", "-in", str(cert), "-noout", "-pubkey"]).stdout
    key_pub = run([openssl, "pkey", "-in", str(key), "-pubout"]).stdout
    assert cert_pub == key_pub
    listed = [json.loads(line) for line in vpnca(ca_home, "list", "--json").stdout.splitlines()]
    assert ([(r["serial"], r["status"], r["identities"]) for r in listed]
            == [(serial, "valid", ["vpn.example.com"])])
    assert serial in vpnca(ca_home, "list").stdout
    shown = json.loads(vpnca(ca_home, "show", serial, "--json").stdout)
    assert shown["profile"] == "gateway"
    assert vpnca(ca_home, "show", serial, "--pem").stdout == cert.read_text()
    vpnca(ca_home, "revoke", serial, "--reason", "keyCompromise")
    assert json.loads(vpnca(ca_home, "show", serial, "--json").stdout)["revocation_reason"] == "keyCompromise"
    twice = vpnca(ca_home, "revoke", serial, "--reason", "keyCompromise", check=False)
    assert twice.returncode == 1 and "already revoked" in twice.stderr


def test_issue_from_an_openssl_csr(ca_home: CaHome, tmp_path: Path) -> None:
    csr = openssl_csr(tmp_path, subject="/CN=phone.example.com", sans=["DNS:phone.example.com"])
    out = vpnca(ca_home, "issue", "--profile", "device", "--csr", str(csr), "--chain")
    assert out.stdout.count("BEGIN CERTIFICATE") == 2


def test_bad_input_gives_one_line_errors_and_non_zero_exit(ca_home: CaHome, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csr"
    bad.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    weak = openssl_csr(tmp_path, subject="/CN=w.example.com", algorithm="rsa-1024", name="weak")
    outside = openssl_csr(tmp_path, subject="/CN=x.example.org", name="outside")
    cases = [
        (["issue", "--profile", "device", "--csr", str(bad)], "malformed CSR"),
        (["issue", "--profile", "device", "--csr", str(weak)], "1024 bits"),
        (["issue", "--profile", "device", "--csr", str(outside)], "outside the allowed domains"),
        (["revoke", "0123abcd"], "no issued certificate"),
        (["revoke", "zz"], "not a hexadecimal serial"),
        (["show", "99"], "no certificate"),
    ]
    for args, message in cases:
        result = vpnca(ca_home, *args, check=False)
        assert result.returncode == 1, args
        assert result.stderr.startswith("vpnca: error:") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert vpnca(ca_home, "list", "--json").stdout == ""  # JSON Lines: no row, no line


def test_status_reports_an_interrupted_issuance(ca_home: CaHome) -> None:
    db = ca_home.home / "vpnca.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO certificates (serial, issuer, profile, subject, identities, status, not_before,"
            " not_after, requester, protocol, created_at) VALUES ('abc123', 'x', 'device', 'CN=half',"
            " '[]', 'issuing', '2026-01-01 00:00:00', '2026-01-08 00:00:00', 'x', 'cli',"
            " '2026-01-01 00:00:00')")
    status = json.loads(vpnca(ca_home, "status", "--json").stdout)
    assert [s["serial"] for s in status["interrupted_issuances"]] == ["abc123"]
    assert "abc123" in vpnca(ca_home, "status").stdout


def test_audit_verify_names_a_tampered_entry(ca_home: CaHome) -> None:
    vpnca(ca_home, "issue", "--profile", "device", "--id", "a.example.com",
          "--key-out", str(ca_home.home / "a.key"))
    assert vpnca(ca_home, "audit", "verify").returncode == 0
    with sqlite3.connect(ca_home.home / "vpnca.db") as conn:
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
    result = vpnca(ca_home, "audit", "verify", check=False)
    assert result.returncode == 1 and "entry 2" in result.stdout
    report = json.loads(vpnca(ca_home, "audit", "verify", "--json", check=False).stdout)
    assert report["ok"] is False and report["problems"][0].startswith("entry 2")


def test_config_changes_are_audited(ca_home: CaHome) -> None:
    vpnca(ca_home, "list")
    vpnca(ca_home, "list")
    config = ca_home.home / "vpnca.toml"
    config.write_text(config.read_text().replace("lifetime_days = 7", "lifetime_days = 3"))
    vpnca(ca_home, "list")
    actions = [e.action for e in ca_home.store.audit_entries()]
    assert actions.count("config") == 2
