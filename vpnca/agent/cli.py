"""`vpnca agent enroll|renew|run|status`: the argument parsing, a few lines over vpnca.agent.core.

Needs no VPNCA_HOME, no CA database and no CA token: only the agent directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vpnca.agent import DEFAULT_DIR, core
from vpnca.agent.errors import AgentError
from vpnca.agent.keys import KEY_TYPES
from vpnca.agent.state import short


def default_dir() -> str:
    return os.environ.get("VPNCA_AGENT_DIR") or DEFAULT_DIR


def add_agent_parser(sub: Any) -> None:
    """Add `agent` and its commands to the `vpnca` subparsers."""
    agent = sub.add_parser("agent", help="the endpoint agent: enroll over EST, renew, reload charon")
    commands = agent.add_subparsers(dest="agent_command", required=True)

    def command(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help_)
        p.add_argument("--dir", type=Path, default=None,
                       help=f"agent state directory (default $VPNCA_AGENT_DIR or {DEFAULT_DIR})")
        p.set_defaults(func=fn)
        return p

    p = command("enroll", cmd_enroll, "first enrollment with a one-time token (key made here)")
    p.add_argument("--server", required=True, help="EST server, e.g. https://ca.example.com:8443")
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca-fingerprint", help="SHA-256 fingerprint of the CA's root certificate")
    trust.add_argument("--cacert", type=Path, help="the CA's root certificate (PEM)")
    p.add_argument("--token", required=True, help="ID:SECRET from `vpnca token create`")
    p.add_argument("--id", required=True, dest="identity", help="IKE identity: FQDN, IP, email or DN")
    p.add_argument("--profile", choices=list(core.PROFILES), default="device")
    p.add_argument("--key-type", choices=list(KEY_TYPES), default="ec-p256")
    p.add_argument("--pkcs11-module", help="make the key on this PKCS#11 module's token")
    p.add_argument("--token-label", help="the token's label (with --pkcs11-module)")
    p.add_argument("--pin-file", help="file holding the token's user PIN (with --pkcs11-module)")
    p.add_argument("--vici", help="load the credentials into charon at this VICI socket (unix:///path)")
    p.add_argument("--exec", dest="exec_cmd", help="run this shell command after each new certificate")
    p.add_argument("--keep-key", action="store_true", help="renew with the same key (default: a new key)")

    p = command("renew", cmd_renew, "renew if due (for a systemd timer); reload charon")
    p.add_argument("--force", action="store_true", help="renew now, whether due or not")
    p.add_argument("--keep-key", action="store_true", default=None, help="renew with the same key this time")

    p = command("run", cmd_run, "the daemon: renew when due, retry with backoff")
    p.add_argument("--check-every", type=float, default=300.0, help="seconds between checks (default 300)")
    p.add_argument("--retry-max", type=float, default=3600.0,
                   help="longest backoff in seconds (default 3600)")

    p = command("status", cmd_status, "serial, expiry, next renewal, last error")
    p.add_argument("--json", action="store_true")

    p = command("vici-relay", cmd_vici_relay,
                "on a gateway host: let the CA reach the local charon's VICI over mutual TLS")
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    p.add_argument("--vici", default="unix:///var/run/charon.vici", help="charon's local VICI socket")
    p.add_argument("--allow-id", action="append", required=True, dest="allow_ids",
                   help="identity of a client certificate admitted (`vpnca gateway relay-client --id`)")


def cmd_vici_relay(args: argparse.Namespace) -> int:
    import logging

    from vpnca.agent.relay import RelayConfig, serve

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print("vpnca agent: error: --listen must be HOST:PORT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = RelayConfig(directory=_dir(args), vici=args.vici,
                         allow_ids=frozenset(i.lower() for i in args.allow_ids))
    try:
        serve(config, host.strip("[]"), int(port))
    except AgentError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        pass
    return 0


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir is not None else Path(default_dir())


def _fail(exc: AgentError) -> int:
    print(f"vpnca agent: error: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code


def cmd_enroll(args: argparse.Namespace) -> int:
    options = core.EnrollOptions(
        server=args.server, token=args.token, identity=args.identity, directory=_dir(args),
        profile=args.profile, ca_fingerprint=args.ca_fingerprint, cacert=args.cacert, key_type=args.key_type,
        pkcs11_module=args.pkcs11_module, token_label=args.token_label, pin_file=args.pin_file,
        vici=args.vici, exec_cmd=args.exec_cmd, keep_key=args.keep_key)
    try:
        outcome = core.enroll(options)
    except AgentError as exc:
        core.log_event(None, "agent.enroll_failed", stream=sys.stdout, error=str(exc))
        return _fail(exc)
    return 1 if outcome.get("error") else 0


def cmd_renew(args: argparse.Namespace) -> int:
    try:
        outcome = core.renew(_dir(args), force=args.force, keep_key=args.keep_key)
    except AgentError as exc:
        return _fail(exc)
    return 1 if outcome.get("error") else 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.check_every <= 0 or args.retry_max <= 0:
        print("vpnca agent: error: --check-every and --retry-max must be positive", file=sys.stderr)
        return 2
    return core.run(_dir(args), check_every=args.check_every, retry_max=args.retry_max)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        report = core.status(_dir(args))
    except AgentError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    due_in = core.remaining(report["next_renewal"])
    left = core.remaining(report["not_after"])
    key = report["key"]
    rows = [
        ("identity", f"{report['identity']} ({report['profile']})"),
        ("serial", report["serial"]),
        ("not after", f"{report['not_after']}" + (f" (in {short(left)})" if left is not None and not
                                                    report["expired"] else " (EXPIRED)")),
        ("next renewal", f"{report['next_renewal']}" + (f" (in {short(due_in)})" if due_in is not None
                                                         and due_in.total_seconds() > 0 else " (due)")),
        ("key", key.get("path") or f"pkcs11 {key.get('token_label')}/{key.get('label')}"),
        ("loaded", report["loaded_serial"] or "-"),
        ("server", report["server"]),
        ("last run", report["last_run"] or "-"),
        ("last error", report["last_error"] or "-"),
    ]
    for name, value in rows:
        print(f"{name + ':':14} {value}")
    return 3 if report["expired"] else 0
