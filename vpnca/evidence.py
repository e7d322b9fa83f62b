"""The evidence pack an auditor takes away (`vpnca audit export DIR`) and its verification.

Contents: the config (secrets redacted), the crypto policy, the CA certificates with fingerprints,
the issuance and revocation register (CSV and JSON), the current CRLs, the audit chain with its head
hash and the result of verifying it, and MANIFEST.sha256 over every other file. The manifest's own
hash is appended to the audit chain at export, so a pack re-written with a fresh manifest is caught
too when it is checked against the live database.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.audit import ChainEntry, ChainVerification, verify_chain
from vpnca.config import Settings
from vpnca.errors import Conflict
from vpnca.policy import ACCEPTED_CURVES, ACCEPTED_HASHES, MIN_RSA_BITS
from vpnca.profiles import PROFILE_EKUS
from vpnca.store import Store

MANIFEST = "MANIFEST.sha256"
_SECRET_LINE = re.compile(r"^(\s*[\w.]*(pin|secret|password|passphrase)[\w.]*\s*=).*$", re.I | re.M)
REGISTER_FIELDS = ["serial", "status", "profile", "subject", "identities", "not_before", "not_after", "requester",
                   "protocol", "created_at", "revoked_at", "revocation_reason", "invalidity_date", "renews"]


@dataclass(frozen=True)
class PackVerification:
    ok: bool
    problems: list[str]
    entries: int
    head_hash: str


def _write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _register(store: Store) -> list[dict[str, Any]]:
    renews = {}
    for entry in store.audit_entries():
        if entry.action == "issue":
            details = json.loads(entry.details)
            if details.get("renews"):
                renews[details["serial"]] = details["renews"]
    rows = []
    for record in store.list_certificates():
        rows.append({
            "serial": record.serial, "status": record.status, "profile": record.profile, "subject": record.subject,
            "identities": ";".join(v for _, v in json.loads(record.identities)),
            "not_before": record.not_before.isoformat(), "not_after": record.not_after.isoformat(),
            "requester": record.requester, "protocol": record.protocol, "created_at": record.created_at.isoformat(),
            "revoked_at": record.revoked_at.isoformat() if record.revoked_at else "",
            "revocation_reason": record.revocation_reason or "",
            "invalidity_date": record.invalidity_date.isoformat() if record.invalidity_date else "",
            "renews": renews.get(record.serial, ""),
        })
    return rows


def crypto_policy(settings: Settings) -> dict[str, Any]:
    return {
        "ca": {"root": "ECDSA P-384", "sub_ca": "ECDSA P-384 on a PKCS#11 token", "leaf_signature": "ecdsa-with-SHA384"},
        "accepted_client_keys": {"ec_curves": [c.name for c in ACCEPTED_CURVES], "rsa_min_bits": MIN_RSA_BITS},
        "accepted_csr_hashes": [h.name for h in ACCEPTED_HASHES],
        "refused": ["SHA-1", "MD5", "DSA", f"RSA < {MIN_RSA_BITS}", "wildcards", "names outside the policy"],
        "allowed_domains": list(settings.policy.allowed_domains),
        "allowed_ip_ranges": [str(n) for n in settings.policy.allowed_ip_ranges],
        "profiles": {name: {"extended_key_usages": [oid.dotted_string for oid in PROFILE_EKUS[name]],
                            "lifetime_seconds": settings.profiles[name].lifetime.total_seconds(),
                            "approval": settings.profiles[name].approval}
                     for name in PROFILE_EKUS if name in settings.profiles},
        "ocsp": {"validity_seconds": settings.ocsp.validity.total_seconds()},
        "crl": {"next_update_seconds": settings.crl.next_update.total_seconds(), "delta": settings.crl.delta},
    }


def export_pack(settings: Settings, store: Store, directory: Path, *, actor: str) -> tuple[str, ChainVerification]:
    """Write the pack; returns the manifest's SHA-256 (also audited) and the chain verification."""
    if directory.exists() and any(directory.iterdir()):
        raise Conflict(f"{directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    config = _SECRET_LINE.sub(r"\1 [redacted]", settings.config_path.read_text())
    _write(directory, "config/vpnca.toml", config.encode())
    _write(directory, "policy.json", json.dumps(crypto_policy(settings), indent=2).encode())
    fingerprints = []
    for record in store.ca_certificates():
        cert = x509.load_der_x509_certificate(record.der)
        name = f"ca/{record.role}-{record.serial}.pem"
        _write(directory, name, cert.public_bytes(Encoding.PEM))
        fingerprints.append({"file": name, "role": record.role, "subject": cert.subject.rfc4514_string(),
                             "serial": record.serial, "sha256": cert.fingerprint(hashes.SHA256()).hex(),
                             "not_after": cert.not_valid_after_utc.isoformat()})
    _write(directory, "ca/fingerprints.json", json.dumps(fingerprints, indent=2).encode())
    rows = _register(store)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REGISTER_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    _write(directory, "register/certificates.csv", text.getvalue().encode())
    _write(directory, "register/certificates.json", json.dumps(rows, indent=2).encode())
    for name, delta in ((settings.ca.name, False), (settings.ca.name, True), (settings.root_crl_name, False)):
        crl = store.latest_crl(name, delta=delta)
        if crl is not None:
            _write(directory, f"crl/{name}{'-delta' if delta else ''}.crl", crl.der)
    entries = store.audit_entries()
    chain = "".join(json.dumps({"seq": e.seq, "created_at": e.created_at, "actor": e.actor, "action": e.action,
                                "details": e.details, "prev_hash": e.prev_hash, "entry_hash": e.entry_hash},
                               separators=(",", ":")) + "\n" for e in entries)
    _write(directory, "audit/chain.jsonl", chain.encode())
    verification = verify_chain(entries)
    _write(directory, "audit/verification.json", json.dumps(
        {"ok": verification.ok, "entries": verification.entries, "head_hash": verification.head_hash,
         "problems": [str(p) for p in verification.problems]}, indent=2).encode())
    manifest = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(directory).as_posix()}\n"
                       for p in sorted(directory.rglob("*")) if p.is_file())
    _write(directory, MANIFEST, manifest.encode())
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    store.audit(actor, "evidence-export", {"manifest_sha256": digest, "files": manifest.count("\n"),
                                          "audit_head": verification.head_hash})
    return digest, verification


def verify_pack(directory: Path, store: Store | None = None) -> PackVerification:
    """Every file against the manifest, no file added or missing, the chain in the pack, and (given the
    database) the manifest against the hash audited at export."""
    problems: list[str] = []
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return PackVerification(False, [f"{MANIFEST} is missing"], 0, "")
    manifest = manifest_path.read_text()
    listed: dict[str, str] = {}
    for line in manifest.splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: not in the manifest (added)")
    for name, digest in sorted(listed.items()):
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: contents changed (SHA-256 mismatch)")
    entries, head = 0, ""
    chain_path = directory / "audit/chain.jsonl"
    if chain_path.exists():
        try:
            records = [ChainEntry(**json.loads(line)) for line in chain_path.read_text().splitlines() if line]
            result = verify_chain(records)
            entries, head = result.entries, result.head_hash
            problems += [f"audit/chain.jsonl: {p}" for p in result.problems]
            recorded = json.loads((directory / "audit/verification.json").read_text())
            if recorded.get("head_hash") != head:
                problems.append("audit/verification.json: head hash differs from the chain in the pack")
        except (ValueError, TypeError, OSError) as exc:
            problems.append(f"audit/chain.jsonl: unreadable ({exc})")
    if store is not None:
        digest = hashlib.sha256(manifest.encode()).hexdigest()
        exported = [json.loads(e.details).get("manifest_sha256") for e in store.audit_entries()
                    if e.action == "evidence-export"]
        if digest not in exported:
            problems.append(f"{MANIFEST}: not the manifest this CA exported (no audit entry for {digest[:16]}…)")
    return PackVerification(not problems, problems, entries, head)


__all__ = ["PackVerification", "export_pack", "verify_pack"]
