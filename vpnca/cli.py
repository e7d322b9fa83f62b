"""The `vpnca` operator command line."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hsm.errors import HsmError
from vpnca.config import CONFIG_NAME, Settings, load_settings, vpnca_home
from vpnca.errors import BadRequest, ConfigError, VpncaError
from vpnca.events import configure_for, configure_logging
from vpnca.files import STATE_UMASK
from vpnca.reports import add_query_arguments
from vpnca.store import CertStatus
from vpnca.x509util import parse_serial, to_pem

# the modules a command needs are imported by the command: `vpnca status` starts in a fraction of a
# second instead of loading the issuance core, the ceremony and the CRL builder
if TYPE_CHECKING:
    from vpnca.authority import Register
    from vpnca.store import CertificateRecord, Database, Store

log = logging.getLogger("vpnca.cli")


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def open_store(settings: Settings, *, new_ca: bool = False) -> Store:
    """The store, refused (SchemaOutdated) unless its schema is current; `new_ca`: create it if empty."""
    from vpnca.store import Store

    store = Store(settings.database_url)
    if new_ca:
        store.init_schema()
    else:
        store.require_current_schema()
    record_config_change(settings, store)
    return store


def open_database(settings: Settings) -> Database:
    """The database through Core alone, for the commands that only read (and record a changed
    vpnca.toml): they never load the ORM. Refused (SchemaOutdated) unless its schema is current."""
    from vpnca.store import Database

    database = Database(settings.database_url)
    database.require_current_schema()
    record_config_change(settings, database)
    return database


def record_config_change(settings: Settings, store: Database) -> None:
    """Audit vpnca.toml whenever its content differs from the last version the chain recorded."""
    digest = hashlib.sha256(settings.config_path.read_bytes()).hexdigest()
    last = store.latest_audit("config")
    if last is None or json.loads(last.details).get("sha256") != digest:
        store.audit(actor(), "config", {"path": str(settings.config_path), "sha256": digest})


# -- output ---------------------------------------------------------------------------------

def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def record_dict(record: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": record.serial,
        "status": "on-hold" if record.revocation_reason == "certificateHold" and
                  record.status == CertStatus.REVOKED else record.status,
        "profile": record.profile,
        "subject": record.subject,
        "identities": [i.value for i in record.identities],
        "not_before": record.not_before.isoformat(),
        "not_after": record.not_after.isoformat(),
        "requester": record.requester,
        "protocol": record.protocol,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "revocation_reason": record.revocation_reason,
        "error": record.error,
    }


# -- commands -------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from hsm.softhsm import init_softhsm_token
    from vpnca import ceremony
    from vpnca.config import render_config

    home = vpnca_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = home / CONFIG_NAME
    if not config_path.exists():
        softhsm_conf = pin_file = None
        if args.softhsm:
            created = init_softhsm_token(home / "softhsm", args.token_label)
            softhsm_conf, pin_file = "softhsm/softhsm2.conf", "softhsm/pin"
            log.info("created SoftHSM token %s in %s", created.label, created.conf.parent)
        config_path.write_text(render_config(
            domains=args.domain or ["example.com"], ip_ranges=args.ip_range or ["10.0.0.0/8"],
            token_label=args.token_label, softhsm_conf=softhsm_conf, pin_file=pin_file,
            module=args.module, ca_name=args.ca_name, http_base=args.http_base,
            root_key=args.root_key, name_constraints=args.name_constraints,
        ))
    elif args.softhsm or args.domain or args.ip_range:
        raise ConfigError(f"{config_path} exists; edit it instead of passing init options")
    settings = load_settings(home)
    store = open_store(settings, new_ca=True)
    hierarchy = ceremony.initialise(settings, store, actor=actor())
    print(f"root CA   {hierarchy.root.subject.rfc4514_string()}  serial {hierarchy.root.serial_number:x}")
    print(f"sub-CA    {hierarchy.sub.subject.rfc4514_string()}  serial {hierarchy.sub.serial_number:x}")
    print(f"OCSP      {hierarchy.ocsp_signer.subject.rfc4514_string()}")
    print(f"files     {settings.home / 'ca'}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from hsm import generate_software_key
    from vpnca.authority import Authority, IssueRequest, request_from_csr
    from vpnca.files import write_private
    from vpnca.identities import IkeIdentity

    settings = load_settings()
    store = open_store(settings)
    identities = [IkeIdentity.parse(i) for i in args.id] if args.id else None
    if args.csr:
        if args.key_out:
            raise BadRequest("--key-out makes no sense with --csr: the key stays with the requester")
        try:
            csr_data = Path(args.csr).read_bytes()
        except OSError as exc:
            raise BadRequest(f"cannot read {args.csr}: {exc.strerror}") from exc
        request = request_from_csr(csr_data, profile=args.profile, requester=actor(), protocol="cli",
                                   identities=identities)
        key = None
    else:
        if not identities:
            raise BadRequest("give --id (one or more) or --csr")
        if not args.key_out:
            raise BadRequest("--key-out is needed when vpnca generates the key")
        key = generate_software_key(args.key_type)
        request = IssueRequest(profile=args.profile, identities=tuple(identities),
                               public_key=key.public_key(), requester=actor(), protocol="cli")
    authority = Authority.open(settings, store)
    issued = authority.issue(request)
    pem = to_pem(issued.certificate)
    if args.chain:
        pem += to_pem(authority.certificate)
    if args.out:
        Path(args.out).write_bytes(pem)
    else:
        sys.stdout.write(pem.decode())
    if key is not None:
        write_private(Path(args.key_out), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
    print(issued.serial, file=sys.stderr if not args.out else sys.stdout)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = open_store(settings)
    invalidity = None
    if args.invalidity_date:
        try:
            invalidity = datetime.fromisoformat(args.invalidity_date)
        except ValueError as exc:
            raise BadRequest(f"--invalidity-date: not an ISO 8601 time: {args.invalidity_date}") from exc
        if invalidity.tzinfo is None:
            invalidity = invalidity.replace(tzinfo=UTC)
    # recording a revocation needs no key: it succeeds even when the token is unavailable
    record = record_keeper(settings, store).revoke(parse_serial(args.serial), args.reason, actor=actor(),
                                                   invalidity_date=invalidity)
    print(f"revoked {record.serial} ({record.revocation_reason}) at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}")
    publish(settings, store, record.serial)
    return 0


def record_keeper(settings: Settings, store: Store) -> Register:
    """What changes only the register (revocation records): no key, so it works with the token away."""
    from vpnca.authority import Register

    return Register(store)


def publish(settings: Settings, store: Store, serial: str) -> None:
    """Re-sign the serial's OCSP answers and a new CRL now; the scheduler catches up if this fails."""
    from vpnca.authority import Authority
    from vpnca.revocation import Publisher

    try:
        crl = Publisher(Authority.open(settings, store)).publish_revocation(serial, actor())
        print(f"OCSP re-signed; {crl.describe()} published ({crl.entries} entries)")
    except VpncaError as exc:
        print(f"vpnca: warning: recorded, but not yet published ({exc}); the scheduler will retry",
              file=sys.stderr)


def cmd_release(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = open_store(settings)
    record = record_keeper(settings, store).release_hold(parse_serial(args.serial), actor=actor())
    print(f"released {record.serial} from hold")
    publish(settings, store, record.serial)
    return 0


def cmd_renew_early(args: argparse.Namespace) -> int:
    """Ask the holders of valid certificates to renew now: ACME renewalInfo (RFC 9773) windows start
    now, and `vpnca agent` sees it (Store.renew_early_due)."""
    store = open_store(load_settings())
    marked = store.mark_renew_early(actor=actor(), serials=[parse_serial(s) for s in args.serial or []],
                                    profile=args.profile, everything=args.all)
    if args.json:
        print(json.dumps({"marked": marked}))
    else:
        print(f"{len(marked)} certificate(s) to renew now" + "".join(f"\n{s}" for s in marked))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Streamed in serial order (vpnca/reports.py): JSON Lines with --json, keyset pages with --after."""
    from vpnca.reports import LIST_COLUMNS, query_from_args, write_rows

    store = open_database(load_settings())
    write_rows(query_from_args(args).rows(store), LIST_COLUMNS, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cryptography import x509

    store = open_store(load_settings())
    serial = parse_serial(args.serial)
    record = store.get_certificate(serial)
    if record is None:
        raise VpncaError(f"no certificate with serial {serial}")
    if args.pem:
        if record.der is None:
            raise VpncaError(f"certificate {serial} was never signed ({record.status})")
        sys.stdout.write(to_pem(x509.load_der_x509_certificate(record.der)).decode())
        return 0
    info = record_dict(record)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if value is not None:
                print(f"{key:18} {', '.join(value) if isinstance(value, list) else value}")
    return 0


STATUS_AUDIT_TAIL = 1000  # `vpnca status` verifies this many of the newest audit entries


def status_report(settings: Settings, store: Database) -> dict[str, Any]:
    from cryptography import x509

    from vpnca import issuer
    from vpnca.audit import GENESIS_HASH
    from vpnca.health import job_freshness
    from vpnca.store.ocsp_backlog import count_without_fresh_answer

    now = datetime.now(UTC)
    report: dict[str, Any] = {"home": str(settings.home), "database": settings.database_url.split("@")[-1]}
    try:
        token = issuer.open_settings_token(settings)
        report["token"] = {"label": token.label, "module": settings.token.module, "ok": True}
    except VpncaError as exc:
        report["token"] = {"label": settings.token.label, "ok": False, "error": str(exc)}
    cas = []
    for record in store.ca_certificates():
        cert = x509.load_der_x509_certificate(record.der)
        cas.append({"role": record.role, "subject": cert.subject.rfc4514_string(), "serial": record.serial,
                    "not_after": cert.not_valid_after_utc.isoformat(), "key_label": record.key_label})
    report["ca_certificates"] = cas
    report["certificates"] = store.count_by_status()
    # signing takes milliseconds: a reservation still `issuing` is almost surely one a killed process
    # left behind; shown at once, resolved (failed, token given back) when `vpnca serve` starts
    stuck = list(store.iter_certificates(status=CertStatus.ISSUING.value))
    report["interrupted_issuances"] = [
        {"serial": r.serial, "subject": r.subject, "started": r.created_at.isoformat()} for r in stuck
    ]
    crl = store.latest_crl(settings.ca.name)
    report["crl"] = {"number": crl.number, "this_update": crl.this_update.isoformat(),
                     "next_update": crl.next_update.isoformat(), "entries": crl.entries,
                     "fresh": crl.next_update > now} if crl else None
    report["jobs"] = [{"job": j.job, "ok": j.ok, "last_run": j.last_run.isoformat(), "message": j.message,
                       "failures": j.failures,
                       "next_attempt": j.next_attempt.isoformat() if j.next_attempt else None,
                       **job_freshness(settings, j, now)}  # age, interval, stale: has the scheduler stopped?
                      for j in store.job_runs()]
    # counted on indexes alone: certificates without a fresh answer (vpnca/store/ocsp_backlog.py)
    report["ocsp_presign_backlog"] = count_without_fresh_answer(store, settings.ca.name,
                                                                now + settings.ocsp.refresh_before,
                                                                report["certificates"])
    # the newest entries only (the whole chain: `vpnca audit verify`), so that status stays fast
    from vpnca.evidence import verify_segment

    head_seq, head_hash = store.audit_head()
    first = max(1, head_seq - STATUS_AUDIT_TAIL + 1)
    entry = store.audit_entry(first - 1) if first > 1 else None
    tail = verify_segment(store.iter_audit(first, head_seq), first_seq=first,
                          prev_hash=entry.entry_hash if entry is not None else GENESIS_HASH)
    report["audit"] = {"entries": head_seq, "head": head_hash, "ok": tail.ok and tail.head_hash == head_hash,
                       "verified_from": first}
    return report


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    report = status_report(settings, open_database(settings))
    from vpnca.health import job_state

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    token = report["token"]
    print(f"home          {report['home']}")
    print(f"database      {report['database']}")
    token_state = "ok" if token["ok"] else "UNAVAILABLE " + token.get("error", "")
    print(f"token         {token['label']}: {token_state}")
    for ca in report["ca_certificates"]:
        print(f"{ca['role'] + ' CA':13} {ca['subject']}  serial {ca['serial']}  until {ca['not_after'][:10]}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report["certificates"].items())) or "none"
    print(f"certificates  {counts}")
    stuck = report["interrupted_issuances"]
    print(f"interrupted   {len(stuck)}"
          + "".join(f"\n  {s['serial']} {s['subject']} since {s['started'][:19]}" for s in stuck))
    crl = report["crl"]
    print("crl           "
          + (f"{crl['number']} ({crl['entries']} entries), next update {crl['next_update'][:19]}"
             f"{'' if crl['fresh'] else ' STALE'}" if crl else "none published"))
    backlog = report["ocsp_presign_backlog"]
    print(f"ocsp backlog  {backlog}")
    for job in report["jobs"]:
        state = job_state(job)
        print(f"job {job['job']:<10} {state}  {job['last_run'][:19]}  {job['message'][:60]}")
    audit = report["audit"]
    print(f"audit chain   {audit['entries']} entries, {'intact' if audit['ok'] else 'BROKEN'}, "
          f"head {audit['head'][:16]}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from vpnca.evidence import export_pack
    from vpnca.reports import parse_moment

    settings = load_settings()
    until = parse_moment(args.until, option="--until", end_of_day=True) if args.until else datetime.now(UTC)
    since = parse_moment(args.since, option="--since") if args.since else until - timedelta(days=90)
    digest, chain = export_pack(settings, open_database(settings), Path(args.directory), actor=actor(),
                                since=since, until=until, compress=args.gzip)
    print(f"evidence pack in {args.directory} for {since:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ}: "
          f"audit chain {chain.entries} entries verified up to the head "
          f"({'intact' if chain.ok else 'BROKEN'}), head {chain.head_hash}; manifest SHA-256 {digest}")
    return 0


def cmd_report_expiring(args: argparse.Namespace) -> int:
    """Streamed, soonest first (vpnca/reports.py); --after SERIAL continues a page."""
    from vpnca.reports import EXPIRING_COLUMNS, query_from_args, write_rows

    store = open_database(load_settings())
    now = datetime.now(UTC)
    query = query_from_args(args, status=CertStatus.VALID.value, by_expiry=True, expires_after=now,
                            expires_before=now + parse_duration(args.within))
    write_rows(query.rows(store), EXPIRING_COLUMNS, args.json)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the database schema to this vpnca's revision (a no-op when it is there already)."""
    from vpnca.store import Database

    store = Database(load_settings().database_url)
    try:
        before = store.schema_state().describe()
        previous, current = store.upgrade_schema()
        if previous == current:
            print(f"database schema at {current}: up to date")
        else:
            store.audit(actor(), "schema-upgrade", {"from": previous, "to": current})
            print(f"database schema upgraded: {before} -> {current}")
    finally:
        store.dispose()
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from vpnca.store import Database

    store = Database(load_settings().database_url)
    try:
        state = store.schema_state()
    finally:
        store.dispose()
    problem = state.problem()
    if args.json:
        print(json.dumps({"current": state.current, "head": state.head, "up_to_date": state.up_to_date,
                          "problem": str(problem) if problem else None}, indent=2))
    else:
        print(f"current   {state.describe()}\nhead      {state.head}")
        print("up to date" if problem is None else str(problem))
    return 0 if problem is None else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from vpnca.audit import verify_chain

    if args.pack:
        return verify_pack_command(args)
    store = open_database(load_settings())
    result = verify_chain(store.iter_audit())  # streamed: constant memory at any chain length
    return report_verification("audit chain", result.ok, result.entries, result.head_hash,
                               [str(p) for p in result.problems], args.json)


def report_verification(what: str, ok: bool, entries: int, head: str, problems: list[str],
                        as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": ok, "entries": entries, "head": head, "problems": problems}, indent=2))
    elif ok:
        print(f"{what} intact: {entries} audit entries, head {head}")
    else:
        for problem in problems:
            print(f"{what} broken: {problem}")
    return 0 if ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from vpnca.server import serve

    settings = load_settings()
    open_store(settings).dispose()
    serve(settings, host=args.host or settings.server.host,
          https_port=args.https_port or settings.server.https_port,
          http_port=args.http_port or settings.server.http_port, workers=args.workers,
          log_level="info" if args.verbose else "warning")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    from vpnca import ceremony, issuer
    from vpnca.authority import Authority
    from vpnca.crl import generate_crl, generate_delta_crl, generate_root_crl

    settings = load_settings()
    store = open_store(settings)
    if args.root:  # the offline root's ceremony: needs its key (passphrase file or token)
        root, _ = issuer.load_ca_certificate(store, "root")
        root_crl = generate_root_crl(settings, store, root, ceremony.load_root_key(settings), actor=actor())
        print(f"root CRL {root_crl.number}, next update {root_crl.crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}")
        return 0
    authority = Authority.open(settings, store)
    published = (generate_delta_crl(authority, actor=actor()) if args.delta
                 else generate_crl(authority, actor=actor()))
    if published is None:
        raise VpncaError("no full CRL yet: run `vpnca crl` first")
    kind = f"delta CRL (base {published.delta_base})" if published.delta_base is not None else "full CRL"
    print(f"{kind} {published.number}: {published.entries} entries, next update "
          f"{published.crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}, in {settings.home / 'crl'}")
    return 0


def cmd_ocsp_serve(args: argparse.Namespace) -> int:
    from vpnca.server import serve_ocsp

    settings = load_settings()
    open_store(settings).dispose()
    serve_ocsp(settings, host=args.host or settings.server.host, port=args.port or settings.server.http_port,
               workers=args.workers, log_level="info" if args.verbose else "warning",
               with_signer=not args.presigned_only)
    return 0


def cmd_ocsp_rotate(args: argparse.Namespace) -> int:
    from ocsp.service import load_ocsp_service
    from vpnca import ceremony, issuer
    from vpnca.authority import Authority

    settings = load_settings()
    store = open_store(settings)
    authority = Authority.open(settings, store)
    token = issuer.open_settings_token(settings)
    cert = ceremony.issue_ocsp_signer(settings, store, token, authority.certificate, authority.key,
                                      actor=actor())
    service = load_ocsp_service(settings, store)
    count = 0
    for status in (CertStatus.VALID.value, CertStatus.REVOKED.value):  # by keyset pages: constant memory
        after = None
        while page := list(store.iter_certificates(status=status, after=after, limit=500)):
            count += service.presign(page)
            after = page[-1].serial
    (settings.home / "ca" / "ocsp-signer.pem").write_bytes(to_pem(cert))
    print(f"new OCSP signer serial {cert.serial_number:x} until {cert.not_valid_after_utc:%Y-%m-%d}; "
          f"re-signed {count} certificates")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from vpnca.authority import Authority
    from vpnca.gateway import fleet
    from vpnca.gateway.credentials import GatewayFiles, enroll_gateway, issue_relay_client
    from vpnca.gateway.profile import render_swanctl
    from vpnca.gateway.status import fleet_status
    from vpnca.gateway.vici_client import ca_chain, push

    settings = load_settings()
    gw = fleet.find(settings, getattr(args, "gateway", None))
    if args.gateway_command == "render":
        text = render_swanctl(settings, gw)
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    if args.gateway_command == "status":
        rows = fleet_status(settings)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            print(f"{r['gateway']}: {'reachable' if r['reachable'] else 'UNREACHABLE'} ({r['vici']}), "
                  f"certificate {r['serial'] or '-'} until {r['not_after'] or '-'}, "
                  f"tunnels up {r['tunnels_up'] if r['tunnels_up'] is not None else '-'}, "
                  f"last push {r['last_push'] or '-'}, last error {r['last_error'] or '-'}")
        if not rows:
            print("no gateways: set [gateway] id or add [[gateways]] in vpnca.toml")
        return 0 if all(r["reachable"] for r in rows) else 1
    authority = Authority.open(settings, open_store(settings))
    if args.gateway_command == "relay-client":
        cert = issue_relay_client(authority, args.id, requester=actor())
        print(f"relay client certificate {cert.serial_number:x} for {args.id} "
              f"until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: {fleet.relay_client_files(settings)[0]}")
        return 0
    if args.gateway_command == "enroll":
        cert = enroll_gateway(authority, args.id, requester=actor(), gw=gw)
        files = GatewayFiles.of(settings, gw)
        print(f"gateway certificate {cert.serial_number:x} "
              f"until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: {files.cert}, key {files.key}")
        return 0
    state = push(settings, ca_chain(authority), uri=args.vici, gw=gw)
    authority.store.audit(actor(), "gateway-push",
                          {"gateway": fleet.name_of(settings, gw),
                           "certificates": [c["serial"] for c in state["certificates"]],
                           "connections": state["connections"]})
    print(json.dumps(state, indent=2) if args.json else
          f"pushed: {len(state['certificates'])} certificates, connections {', '.join(state['connections'])}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from vpnca.gateway import fleet
    from vpnca.gateway.sessions import live_sessions

    settings = load_settings()
    chosen = [fleet.find(settings, args.gateway)] if args.gateway or args.vici else \
        (fleet.managed(settings) or [settings.gateway])
    rows = [row for gw in chosen for row in live_sessions(settings, uri=args.vici, gw=gw)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        children = ", ".join(f"{' '.join(c['remote_ts'])} {c.get('bytes_in', 0)}B in/"
                             f"{c.get('bytes_out', 0)}B out" for c in r["children"])
        print(f"{r['gateway']} {r['ike_id']:>4} {r['state']:<11} {r['identity']} "
              f"{r['remote_address']}:{r['remote_port']} {r['connection']} "
              f"serial {r['serial'] or '?'} up {r['established_seconds']}s [{children}]")
    if not rows:
        print("no tunnels")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    import time

    from vpnca.authority import Authority
    from vpnca.revocation import Publisher
    from vpnca.scheduler import build_scheduler

    settings = load_settings()
    scheduler = build_scheduler(Publisher(Authority.open(settings, open_store(settings))))
    scheduler.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        scheduler.shutdown()
    return 0


def cmd_scep_init(args: argparse.Namespace) -> int:
    from vpnca import ceremony, issuer
    from vpnca.authority import Authority

    settings = load_settings()
    store = open_store(settings)
    if store.current_ca("scep-ra") is not None and not args.rotate:
        raise VpncaError("this CA has a SCEP RA already; --rotate issues a new one")
    authority = Authority.open(settings, store)
    cert = ceremony.issue_scep_ra(settings, store, issuer.open_settings_token(settings),
                                  authority.certificate, authority.key, actor=actor())
    print(f"SCEP RA {cert.serial_number:x} until {cert.not_valid_after_utc:%Y-%m-%d}: "
          f"{settings.home / 'ca/scep-ra.pem'}")
    return 0


def parse_duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError) as exc:
        raise BadRequest(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d)") from exc


def cmd_token_create(args: argparse.Namespace) -> int:
    from vpnca.credentials import create_token
    from vpnca.identities import IkeIdentity

    settings = load_settings()
    store = open_store(settings)
    identities = tuple(IkeIdentity.parse(i) for i in args.id)
    from vpnca.policy import check_identities
    from vpnca.profiles import get_profile

    check_identities(identities, settings.policy)
    get_profile(settings, args.profile).check_protocol(args.protocol)
    token = create_token(store, identities=identities, profile=args.profile, protocol=args.protocol,
                         ttl=parse_duration(args.ttl), created_by=actor())
    if args.json:
        print(json.dumps({"token_id": token.token_id, "secret": token.secret,
                          "credential": f"{token.token_id}:{token.secret}",
                          "expires_at": token.expires_at.isoformat()}))
    else:
        print(f"{token.token_id}:{token.secret}")
        print(f"expires {token.expires_at:%Y-%m-%dT%H:%M:%SZ}; single use; for {', '.join(args.id)}",
              file=sys.stderr)
    return 0


def cmd_acme_eab_create(args: argparse.Namespace) -> int:
    """An external account binding key: the account that presents it may get only --allow names."""
    from vpnca.credentials import option_safe_key, option_safe_token
    from vpnca.identities import IkeIdentity
    from vpnca.policy import check_identities
    from vpnca.profiles import profiles_for
    from vpnca.store import AcmeEabKey
    from vpnca.store.acme import AcmeRepository

    settings = load_settings()
    identities = tuple(IkeIdentity.parse(i) for i in args.allow)
    not_acme = [i.value for i in identities if i.kind not in ("fqdn", "ip")]
    if not_acme:
        raise BadRequest(f"ACME identifiers are DNS names and IP addresses, not {', '.join(not_acme)}")
    check_identities(identities, settings.policy)
    profile = args.profile or settings.acme.profile
    if profile not in profiles_for(settings, "acme"):
        raise BadRequest(f"no profile {profile!r} for ACME")
    hmac_key, encoded = option_safe_key(32)  # neither the key nor the kid begins with '-'
    now = datetime.now(UTC)
    key = AcmeEabKey(kid=option_safe_token(12), hmac_key=hmac_key,
                     allowed_identities=tuple(identities), profile=profile,
                     created_by=actor(), created_at=now, expires_at=now + parse_duration(args.ttl))
    AcmeRepository(open_store(settings)).add_eab_key(key)
    if args.json:
        print(json.dumps({"kid": key.kid, "hmac_key": encoded, "profile": profile,
                          "allowed": [i.value for i in identities],
                          "expires_at": key.expires_at.isoformat()}))
    else:
        print(f"kid:      {key.kid}\nhmac_key: {encoded}")
        print(f"single use; expires {key.expires_at:%Y-%m-%dT%H:%M:%SZ}; profile {profile}; for "
              f"{', '.join(i.value for i in identities)}", file=sys.stderr)
    return 0


def cmd_acme_eab_list(args: argparse.Namespace) -> int:
    from vpnca.store.acme import AcmeRepository

    rows = [{"kid": k.kid, "profile": k.profile,
             "allowed": ",".join(i.value for i in k.allowed_identities),
             "account": k.account_id or "-", "expires_at": k.expires_at.isoformat()[:19]}
            for k in AcmeRepository(open_store(load_settings())).eab_keys()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["kid", "profile", "allowed", "account", "expires_at"])
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    store = open_store(load_settings())
    rows = [{"request_id": p.request_id, "profile": p.profile,
             "identities": ",".join(i.value for i in p.identities), "requester": p.requester,
             "created_at": p.created_at.isoformat()[:19]} for p in store.list_pending()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["request_id", "profile", "identities", "requester", "created_at"])
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    store = open_store(load_settings())
    pending = store.decide_pending(args.request_id, approve=args.command == "approve", actor=actor())
    print(f"{pending.request_id} {pending.status}")
    return 0


def verify_pack_command(args: argparse.Namespace) -> int:
    from vpnca.evidence import verify_pack

    store = None
    if (vpnca_home() / CONFIG_NAME).exists():
        store = open_database(load_settings())
    result = verify_pack(Path(args.pack), store)
    return report_verification("evidence pack", result.ok, result.entries, result.head_hash, result.problems,
                               args.json)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate vpnca.toml; print the effective settings (defaults filled in, no secrets)."""
    from vpnca.config import dump_toml, effective_config

    try:
        settings = load_settings()
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"config": str(vpnca_home() / CONFIG_NAME), "valid": False, "error": str(exc)}))
        raise
    effective = effective_config(settings)
    if args.json:
        print(json.dumps({"config": str(settings.config_path), "home": str(settings.home), "valid": True,
                          "settings": effective}, indent=2))
    else:
        print(f"# {settings.config_path} is valid. Effective settings, defaults filled in:")
        print(dump_toml(effective), end="")
    return 0


# -- parser ---------------------------------------------------------------------------------

def cmd_agent(args: argparse.Namespace) -> int:
    from vpnca.agent.cli import add_agent_parser

    parser = argparse.ArgumentParser(prog="vpnca")
    add_agent_parser(parser.add_subparsers(dest="command", required=True))
    agent_args = parser.parse_args(["agent", *args.agent_args])
    return int(agent_args.func(agent_args))


def revocation_reason(name: str) -> str:
    """`--reason`, checked when given: the reasons' module loads the token layer, which most commands
    never need."""
    from vpnca.issuer import REVOCATION_REASONS

    if name not in REVOCATION_REASONS:
        raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(REVOCATION_REASONS)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpnca", description="Private PKI for IKEv2/IPsec VPNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=fn)
        return p

    p = command("init", cmd_init, "create vpnca.toml, the root, the token-held sub-CA and the OCSP signer")
    p.add_argument("--softhsm", action="store_true",
                   help="create a development SoftHSM2 token under VPNCA_HOME")
    p.add_argument("--domain", action="append", help="allowed DNS domain (repeatable)")
    p.add_argument("--ip-range", action="append", help="allowed IP range in CIDR (repeatable)")
    p.add_argument("--token-label", default="vpnca")
    p.add_argument("--module",
                   default=os.environ.get("VPNCA_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
    p.add_argument("--ca-name", default="vpnca-sub")
    p.add_argument("--http-base", default="http://127.0.0.1:8080", help="base URL of CRL/OCSP/AIA")
    p.add_argument("--root-key", choices=["software", "token"], default="software")
    p.add_argument("--name-constraints", action="store_true",
                   help="constrain the sub-CA to the allowed names")

    p = command("issue", cmd_issue, "issue a certificate")
    p.add_argument("--profile", required=True, help="a profile of vpnca.toml (device, gateway, [profiles.*])")
    p.add_argument("--id", action="append", help="IKE identity: FQDN, IP, email or DN (repeatable)")
    p.add_argument("--csr", help="PEM or DER CSR (otherwise a key is generated)")
    p.add_argument("--out", help="certificate output (PEM); default stdout")
    p.add_argument("--key-out", help="where to write the generated private key (PKCS#8 PEM)")
    p.add_argument("--key-type", choices=["ec-p256", "ec-p384", "rsa-3072"], default="ec-p256")
    p.add_argument("--chain", action="store_true", help="append the sub-CA certificate")

    p = command("revoke", cmd_revoke, "revoke a certificate (or put it on hold)")
    p.add_argument("serial")
    p.add_argument("--reason", default="unspecified", type=revocation_reason,
                   help="an RFC 5280 reason name, e.g. keyCompromise, superseded, certificateHold")
    p.add_argument("--invalidity-date", help="ISO 8601 time the key is known or suspected compromised")

    p = command("sessions", cmd_sessions, "live tunnels at the managed gateways (VICI list-sas)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--gateway", help="only this gateway (a [[gateways]] name, or default)")
    p.add_argument("--vici", help="charon's VICI socket (default: the gateway's vici_socket)")

    p = command("release", cmd_release, "release a certificate from hold")
    p.add_argument("serial")

    p = command("renew-early", cmd_renew_early, "ask holders to renew valid certificates now (ACME ARI)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", action="append", help="a certificate's serial (repeatable)")
    which.add_argument("--profile", help="every valid certificate of this profile")
    which.add_argument("--all", action="store_true", help="every valid certificate")
    p.add_argument("--json", action="store_true")

    p = command("list", cmd_list, "list certificates (streamed, by serial; --json: JSON Lines)")
    add_query_arguments(p, listing=True)

    p = command("show", cmd_show, "show one certificate")
    p.add_argument("serial")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pem", action="store_true", help="print the certificate as PEM")

    p = command("status", cmd_status, "token, CA certificates, counts, interrupted issuances, audit")
    p.add_argument("--json", action="store_true")

    p = command("serve", cmd_serve, "run EST over HTTPS and the HTTP listener")
    p.add_argument("--host")
    p.add_argument("--https-port", type=int)
    p.add_argument("--http-port", type=int)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each its own token session)")

    token = sub.add_parser("token", help="one-time enrollment credentials").add_subparsers(
        dest="token_command", required=True)
    p = token.add_parser("create", help="create a single-use enrollment token bound to identities")
    p.add_argument("--id", action="append", required=True, help="identity the token may enroll (repeatable)")
    p.add_argument("--profile", default="device", help="a profile that allows --protocol (default: device)")
    p.add_argument("--protocol", default="est", choices=["est", "scep"])
    p.add_argument("--ttl", default="1h", help="lifetime, e.g. 30m, 1h, 2d")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token_create)

    acme = sub.add_parser("acme", help="ACME accounts").add_subparsers(dest="acme_command", required=True)
    eab = acme.add_parser("eab", help="external account binding keys").add_subparsers(
        dest="eab_command", required=True)
    p = eab.add_parser("create", help="a key that binds one new ACME account to the names it may get")
    p.add_argument("--allow", action="append", required=True,
                   help="DNS name or IP the account may get (repeatable)")
    p.add_argument("--profile", help="profile of its certificates (default: acme.profile)")
    p.add_argument("--ttl", default="7d", help="how long the key can be used to create the account")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_acme_eab_create)
    p = eab.add_parser("list", help="external account binding keys and the accounts bound to them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_acme_eab_list)

    p = command("crl", cmd_crl, "sign and publish a new CRL now")
    p.add_argument("--delta", action="store_true", help="a delta CRL against the latest full CRL")
    p.add_argument("--root", action="store_true", help="re-sign the offline root's CRL (needs the root key)")

    ocsp = sub.add_parser("ocsp", help="the OCSP responder").add_subparsers(dest="ocsp_command",
                                                                             required=True)
    p = ocsp.add_parser("serve", help="run the stateless OCSP/CRL responder alone")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--presigned-only", action="store_true", help="no signing key: pre-signed answers only")
    p.set_defaults(func=cmd_ocsp_serve)
    p = ocsp.add_parser("rotate-signer", help="issue a new OCSP signer certificate and re-sign everything")
    p.set_defaults(func=cmd_ocsp_rotate)

    gateway = sub.add_parser("gateway", help="the managed strongSwan gateways").add_subparsers(
        dest="gateway_command", required=True)
    p = gateway.add_parser("enroll", help="issue the gateway certificate (fresh key)")
    p.add_argument("--id", help="IKE identity (default the gateway's id)")
    p.add_argument("--gateway", help="a [[gateways]] name (default: [gateway])")
    p.set_defaults(func=cmd_gateway)
    p = gateway.add_parser("render", help="write swanctl.conf from the crypto policy")
    p.add_argument("--out")
    p.add_argument("--gateway", help="a [[gateways]] name (default: [gateway])")
    p.set_defaults(func=cmd_gateway)
    p = gateway.add_parser("push", help="load key, certificates, authority and connections over VICI")
    p.add_argument("--vici", help="VICI socket URI (default the gateway's vici_socket)")
    p.add_argument("--gateway", help="a [[gateways]] name (default: [gateway])")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gateway)
    p = gateway.add_parser("status", help="every gateway: reachable, certificate expiry, tunnels, last push")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gateway)
    p = gateway.add_parser("relay-client", help="issue the certificate vpnca presents to `agent vici-relay`")
    p.add_argument("--id", required=True, help="its identity (what the relays' --allow-id name)")
    p.set_defaults(func=cmd_gateway)

    scep_cmd = sub.add_parser("scep", help="the SCEP RA").add_subparsers(dest="scep_command", required=True)
    p = scep_cmd.add_parser("init", help="issue the SCEP RA certificate (RSA key on the token)")
    p.add_argument("--rotate", action="store_true", help="replace the current RA")
    p.set_defaults(func=cmd_scep_init)

    command("scheduler", cmd_scheduler,
            "run the scheduled jobs alone (CRL, OCSP pre-signing, gateway renewal)")

    p = command("pending", cmd_pending, "list enrollments waiting for approval")
    p.add_argument("--json", action="store_true")
    for name in ("approve", "reject"):
        p = command(name, cmd_decide, f"{name} a pending enrollment")
        p.add_argument("request_id")

    audit = sub.add_parser("audit", help="audit log").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="verify the audit hash chain, or an exported evidence pack")
    p.add_argument("--pack", help="an evidence pack directory from `vpnca audit export`")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_verify)
    p = audit.add_parser("export", help="write an evidence pack of a period for auditors")
    p.add_argument("directory")
    p.add_argument("--since", metavar="DATE", help="start of the period (default: 90 days before --until)")
    p.add_argument("--until", metavar="DATE", help="end of the period, a date included (default: now)")
    p.add_argument("--gzip", action="store_true", help="compress the register and the audit chain")
    p.set_defaults(func=cmd_audit_export)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", help="migrate the database schema to this vpnca's revision")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("current", help="the schema revision and this vpnca's (exit 1 when not up to date)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_current)

    config = sub.add_parser("config", help="vpnca.toml").add_subparsers(dest="config_command", required=True)
    p = config.add_parser("check", help="validate vpnca.toml and print the effective settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config_check)

    # the endpoint agent's parser (vpnca/agent/cli.py) loads the agent; it is built for `vpnca agent` only
    p = sub.add_parser("agent", add_help=False,
                       help="the endpoint agent: enroll over EST, renew, reload charon")
    p.add_argument("agent_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_agent)

    report = sub.add_parser("report", help="reports").add_subparsers(dest="report_command", required=True)
    p = report.add_parser("expiring", help="valid certificates expiring within a window (streamed)")
    p.add_argument("--within", default="14d", help="e.g. 14d, 12h")
    add_query_arguments(p, listing=False)
    p.set_defaults(func=cmd_report_expiring)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not cmd_agent:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.func is cmd_agent:  # what its parser reads: `vpnca agent --help` leaves the remainder empty
        args.agent_args = [*args.agent_args, *unknown]
    os.umask(STATE_UMASK)  # the database (EAB keys), logs and vpnca.toml: nothing for others
    # the operator reads one-line errors on stderr; the events go to the log file (and syslog)
    configure_logging(verbose=args.verbose, quiet=True)
    home = vpnca_home()
    if (home / CONFIG_NAME).exists():
        with contextlib.suppress(VpncaError):  # the command itself reports a broken config
            configure_for(load_settings(home), verbose=args.verbose, quiet=True)
    try:
        return int(args.func(args))
    except (VpncaError, HsmError) as exc:
        print(f"vpnca: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
