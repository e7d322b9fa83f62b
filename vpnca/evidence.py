"""The evidence pack an auditor takes away (`vpnca audit export DIR`) and its verification.

A pack covers a period [since, until) (default: the last 90 days). Contents: the config (secrets
redacted), the crypto policy, the CA certificates with fingerprints, the register of the period (the
certificates issued or revoked in it and every certificate valid at some moment of it; CSV and JSON
Lines, optionally gzip-compressed), the current CRLs, the audit chain segment of the period with the
hash it links to, the chain's head at export and the result of verifying the segment up to that head,
and MANIFEST.sha256 over every other file. Everything is written streaming: memory does not grow with
the number of certificates. The manifest's own hash is appended to the audit chain at export, so a pack
re-written with a fresh manifest is caught too when it is checked against the live database, where the
segment is also checked to be the live chain's and to lead to the recorded head.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.audit import (
    GENESIS_HASH,
    AuditProblem,
    AuditRecord,
    ChainEntry,
    ChainVerification,
    entry_hash,
    verify_chain,
)
from vpnca.config import Settings
from vpnca.errors import BadRequest, Conflict
from vpnca.gateway.records import write_connection_records
from vpnca.policy import ACCEPTED_CURVES, ACCEPTED_HASHES, MIN_RSA_BITS
from vpnca.profiles import get_profile
from vpnca.store import Database

MANIFEST = "MANIFEST.sha256"
_SECRET_LINE = re.compile(r"^(\s*[\w.]*(pin|secret|password|passphrase)[\w.]*\s*=).*$",
                          re.IGNORECASE | re.MULTILINE)
REGISTER_FIELDS = ["serial", "status", "profile", "subject", "identities", "not_before", "not_after",
                   "requester", "protocol", "created_at", "revoked_at", "revocation_reason",
                   "invalidity_date", "renews"]
CHAIN = "audit/chain.jsonl"
_CHUNK = 1 << 20


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


@contextmanager
def _text_out(root: Path, relative: str, compress: bool) -> Iterator[IO[str]]:
    """A text file of the pack, gzip-compressed (`.gz` appended, no timestamp in the header) or not."""
    path = root / (relative + (".gz" if compress else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw:
        binary: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
        with io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
            yield text


def _text_in(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def register_row(record: Any, renews: dict[str, str]) -> dict[str, Any]:
    return {
        "serial": record.serial, "status": record.status, "profile": record.profile,
        "subject": record.subject,
        "identities": ";".join(i.value for i in record.identities),
        "not_before": record.not_before.isoformat(), "not_after": record.not_after.isoformat(),
        "requester": record.requester, "protocol": record.protocol,
        "created_at": record.created_at.isoformat(), "revoked_at": _iso(record.revoked_at),
        "revocation_reason": record.revocation_reason or "", "invalidity_date": _iso(record.invalidity_date),
        "renews": renews.get(record.serial, ""),
    }


def verify_segment(records: Iterable[AuditRecord], *, first_seq: int, prev_hash: str) -> ChainVerification:
    """`verify_chain` for a part of the chain: it starts at `first_seq` and links to `prev_hash`."""
    problems: list[AuditProblem] = []
    expected_seq, prev, count = first_seq, prev_hash, 0
    for record in records:
        count += 1
        if record.seq != expected_seq:
            problems.append(AuditProblem(record.seq,
                                         f"sequence gap or reorder: expected entry {expected_seq} here"))
        if record.prev_hash != prev:
            problems.append(AuditProblem(record.seq, "link to the previous entry is broken"))
        if entry_hash(record.prev_hash, record.seq, record.created_at, record.actor, record.action,
                      record.details) != record.entry_hash:
            problems.append(AuditProblem(record.seq, "contents were edited (hash mismatch)"))
        prev, expected_seq = record.entry_hash, record.seq + 1
    return ChainVerification(entries=count, head_hash=prev, problems=tuple(problems))


def _link_hash(store: Database, seq: int) -> str:
    """The hash an entry `seq` links to: its predecessor's (the genesis hash before entry 1)."""
    if seq <= 1:
        return GENESIS_HASH
    previous = store.audit_entry(seq - 1)
    return previous.entry_hash if previous is not None else ""


def crypto_policy(settings: Settings) -> dict[str, Any]:
    return {
        "ca": {"root": "ECDSA P-384", "sub_ca": "ECDSA P-384 on a PKCS#11 token",
               "leaf_signature": "ecdsa-with-SHA384"},
        "accepted_client_keys": {"ec_curves": [c.name for c in ACCEPTED_CURVES],
                                 "rsa_min_bits": MIN_RSA_BITS},
        "accepted_csr_hashes": [h.name for h in ACCEPTED_HASHES],
        "refused": ["SHA-1", "MD5", "DSA", f"RSA < {MIN_RSA_BITS}", "wildcards", "names outside the policy"],
        "allowed_domains": list(settings.policy.allowed_domains),
        "allowed_ip_ranges": [str(n) for n in settings.policy.allowed_ip_ranges],
        "profiles": {name: {"extended_key_usages": [oid.dotted_string for oid in profile.extended_key_usages],
                            "lifetime_seconds": profile.lifetime.total_seconds(),
                            "approval": profile.approval,
                            "key_types": list(profile.key_types), "protocols": sorted(profile.protocols)}
                     for name in settings.profiles for profile in [get_profile(settings, name)]},
        "ocsp": {"validity_seconds": settings.ocsp.validity.total_seconds()},
        "crl": {"next_update_seconds": settings.crl.next_update.total_seconds(), "delta": settings.crl.delta},
    }


def export_pack(settings: Settings, store: Database, directory: Path, *, actor: str, since: datetime,
                until: datetime, compress: bool = False) -> tuple[str, ChainVerification]:
    """Write the pack of [since, until); returns the manifest's SHA-256 (also audited) and the
    verification of the audit chain from the period's first entry up to the head."""
    if since >= until:
        raise BadRequest(f"the period is empty: {since.isoformat()} is not before {until.isoformat()}")
    if directory.exists() and any(directory.iterdir()):
        raise Conflict(f"{directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    config = _SECRET_LINE.sub(r"\1 [redacted]", settings.config_path.read_text())
    _write(directory, "config/vpnca.toml", config.encode())
    _write(directory, "policy.json", json.dumps(crypto_policy(settings), indent=2).encode())
    fingerprints = []
    for ca_record in store.ca_certificates():
        cert = x509.load_der_x509_certificate(ca_record.der)
        name = f"ca/{ca_record.role}-{ca_record.serial}.pem"
        _write(directory, name, cert.public_bytes(Encoding.PEM))
        fingerprints.append({"file": name, "role": ca_record.role, "subject": cert.subject.rfc4514_string(),
                             "serial": ca_record.serial, "sha256": cert.fingerprint(hashes.SHA256()).hex(),
                             "not_after": cert.not_valid_after_utc.isoformat()})
    _write(directory, "ca/fingerprints.json", json.dumps(fingerprints, indent=2).encode())
    head_seq, head_hash = store.audit_head()
    first = store.audit_seq_at(since)
    last = min(store.audit_seq_at(until) - 1, head_seq)
    # renewal links of the period's issuances (the only part of the register held in memory)
    renews: dict[str, str] = {}
    for entry in store.iter_audit(first, last, action="issue"):
        details = json.loads(entry.details)
        if details.get("renews"):
            renews[details["serial"]] = details["renews"]
    certificates = 0
    with _text_out(directory, "register/certificates.csv", compress) as csv_out, \
            _text_out(directory, "register/certificates.jsonl", compress) as jsonl_out:
        writer = csv.DictWriter(csv_out, fieldnames=REGISTER_FIELDS)
        writer.writeheader()
        for record in store.iter_register(since, until):
            row = register_row(record, renews)
            writer.writerow(row)
            jsonl_out.write(json.dumps(row) + "\n")
            certificates += 1
    crls = ((settings.ca.name, False), (settings.ca.name, True), (settings.root_crl_name, False))
    for crl_name, delta in crls:
        crl = store.latest_crl(crl_name, delta=delta)
        if crl is not None:
            _write(directory, f"crl/{crl_name}{'-delta' if delta else ''}.crl", crl.der)
    anchor = _link_hash(store, first)

    def written(entries: Iterable[Any], out: IO[str]) -> Iterator[Any]:
        for e in entries:
            out.write(json.dumps({"seq": e.seq, "created_at": e.created_at, "actor": e.actor,
                                  "action": e.action, "details": e.details, "prev_hash": e.prev_hash,
                                  "entry_hash": e.entry_hash}, separators=(",", ":")) + "\n")
            yield e

    with _text_out(directory, CHAIN, compress) as chain_out:
        segment = verify_segment(written(store.iter_audit(first, last), chain_out), first_seq=first,
                                 prev_hash=anchor)
    # the rest of the chain, from the period's end to the head, must follow on from the segment
    tail = verify_segment(store.iter_audit(last + 1, head_seq), first_seq=last + 1,
                          prev_hash=segment.head_hash)
    problems = segment.problems + tail.problems
    if tail.head_hash != head_hash:
        problems += (AuditProblem(head_seq, "the chain does not lead to its head"),)
    verification = ChainVerification(entries=segment.entries + tail.entries, head_hash=head_hash,
                                     problems=problems)
    _write(directory, "audit/verification.json", json.dumps({
        "ok": verification.ok, "entries": segment.entries, "head_hash": head_hash,
        "problems": [str(p) for p in problems],
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "segment": {"first_seq": first, "last_seq": last, "prev_hash": anchor,
                    "last_hash": segment.head_hash},
        "chain_head": {"seq": head_seq, "hash": head_hash},
        "verified": f"entries {first} to {head_seq} (the whole chain: vpnca audit verify)",
        "register": {"certificates": certificates, "compressed": compress},
    }, indent=2).encode())
    # -- connection records of the period (vpnca.gateway.records, from the event log) --
    write_connection_records(settings, directory, since, until, compress)
    # --
    manifest = "".join(f"{_sha256(p)}  {p.relative_to(directory).as_posix()}\n"
                       for p in sorted(directory.rglob("*")) if p.is_file())
    _write(directory, MANIFEST, manifest.encode())
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    store.audit(actor, "evidence-export", {"manifest_sha256": digest, "files": manifest.count("\n"),
                                          "audit_head": head_hash, "since": since.isoformat(),
                                          "until": until.isoformat(), "segment": [first, last],
                                          "certificates": certificates})
    return digest, verification


def _chain_file(directory: Path) -> Path | None:
    for name in (CHAIN, CHAIN + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def _check_segment(directory: Path, chain_path: Path, recorded: dict[str, Any],
                   store: Database | None) -> tuple[list[str], int]:
    """The pack's chain segment: whole, linked, as recorded; with the database, the live chain's own
    entries, and the live chain from them to the head recorded at export intact."""
    problems: list[str] = []
    segment, head = recorded["segment"], recorded["chain_head"]
    first, last = int(segment["first_seq"]), int(segment["last_seq"])
    name = chain_path.relative_to(directory).as_posix()
    with _text_in(chain_path) as lines:
        result = verify_segment((ChainEntry(**json.loads(line)) for line in lines if line.strip()),
                                first_seq=first, prev_hash=segment["prev_hash"])
    problems += [f"{name}: {p}" for p in result.problems]
    if result.entries != last - first + 1 or result.head_hash != segment["last_hash"]:
        problems.append(f"{name}: not the segment recorded in audit/verification.json "
                        f"(entries {first} to {last})")
    if store is not None:
        if _link_hash(store, first) != segment["prev_hash"]:
            problems.append(f"{name}: does not link to entry {first - 1} of the database's audit chain")
        if last >= first:
            live = store.audit_entry(last)
            if live is None or live.entry_hash != segment["last_hash"]:
                problems.append(f"{name}: entry {last} differs from the database's")
        tail = verify_segment(store.iter_audit(last + 1, int(head["seq"])), first_seq=last + 1,
                              prev_hash=segment["last_hash"])
        problems += [f"database audit chain: {p}" for p in tail.problems]
        if tail.head_hash != head["hash"]:
            problems.append(f"database audit chain: does not lead from the segment to the head recorded at "
                            f"export (entry {head['seq']})")
    return problems, result.entries


def verify_pack(directory: Path, store: Database | None = None) -> PackVerification:
    """Every file against the manifest, no file added or missing, the chain segment in the pack, and
    (given the database) the segment against the live chain and its head, and the manifest against the
    hash audited at export."""
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
        elif _sha256(path) != digest:
            problems.append(f"{name}: contents changed (SHA-256 mismatch)")
    entries, head = 0, ""
    chain_path = _chain_file(directory)
    if chain_path is not None:
        try:
            recorded = json.loads((directory / "audit/verification.json").read_text())
            head = str(recorded.get("head_hash", ""))
            if "segment" in recorded:
                found, entries = _check_segment(directory, chain_path, recorded, store)
                problems += found
            else:  # a pack from before periods: the whole chain from the genesis entry
                with _text_in(chain_path) as lines:
                    result = verify_chain([ChainEntry(**json.loads(line)) for line in lines if line.strip()])
                entries, head = result.entries, result.head_hash
                problems += [f"{CHAIN}: {p}" for p in result.problems]
                if recorded.get("head_hash") != head:
                    problems.append("audit/verification.json: head hash differs from the chain in the pack")
        except (ValueError, TypeError, KeyError, OSError, EOFError, gzip.BadGzipFile) as exc:
            problems.append(f"{chain_path.relative_to(directory).as_posix()}: unreadable ({exc!r})")
    if store is not None:
        digest = hashlib.sha256(manifest.encode()).hexdigest()
        exported = {json.loads(e.details).get("manifest_sha256")
                    for e in store.iter_audit(action="evidence-export")}
        if digest not in exported:
            problems.append(f"{MANIFEST}: not the manifest this CA exported "
                            f"(no audit entry for {digest[:16]}…)")
    return PackVerification(not problems, problems, entries, head)


__all__ = ["PackVerification", "export_pack", "register_row", "verify_pack", "verify_segment"]
