"""enroll, renew, run, status: what `vpnca agent` does, over the agent directory.

Files in the directory (default /var/lib/vpnca-agent, or $VPNCA_AGENT_DIR): key.pem (a file key, 0600),
cert.pem, chain.pem (the CA certificates from /cacerts), trust-anchor.pem (the pinned root),
state.json, agent.jsonl (one JSON line per outcome). During a renewal cert.pem.prev and key.pem.prev
keep the previous credential until charon has loaded the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from vpnca.agent import est
from vpnca.agent.errors import AgentError, NeedsEnrollment, UsageError
from vpnca.agent.files import fsync_dir, prepare_dir, write_atomic, write_private
from vpnca.agent.keys import (
    KEY_TYPES,
    SigningKey,
    build_csr,
    csr_for_subject,
    destroy_token_key,
    generate_file_key,
    generate_token_key,
    key_pem,
    load_file_key,
    parse_identity,
    read_pin_file,
    token_key,
)
from vpnca.agent.reload import load_into_charon, loaded_serials, run_hook
from vpnca.agent.state import AgentDir, AgentState, KeyRef, iso, now_utc, parse_time, renewal_time

PROFILES = ("device", "gateway")
HISTORY = 10


# -- the log -------------------------------------------------------------------------------------

def log_event(directory: AgentDir | None, event: str, *, stream: Any = None, **fields: Any) -> dict[str, Any]:
    """One JSON line: on stdout (or `stream`) and appended to agent.jsonl in the directory."""
    record = {"ts": iso(now_utc()), "event": event, **{k: v for k, v in fields.items() if v is not None}}
    line = json.dumps(record, sort_keys=False)
    print(line, file=stream or sys.stdout, flush=True)
    if directory is not None and directory.root.is_dir():
        fd = os.open(directory.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line + "\n")
    return record


@contextlib.contextmanager
def locked(directory: AgentDir) -> Iterator[None]:
    """One agent at a time per directory (the timer's `renew` and a `run` daemon)."""
    fd = os.open(directory.lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- helpers -----------------------------------------------------------------------------------------

def _public_der(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _check_issued(cert: x509.Certificate, key: SigningKey, chain: list[x509.Certificate]) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise AgentError("the CA returned a certificate for another key")
    for ca in chain:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):  # another issuer
            continue
    raise AgentError("the certificate the CA returned is not issued by any certificate of its /cacerts")


def _anchor_of(certs: list[x509.Certificate]) -> x509.Certificate:
    """The root among the given CA certificates (self-issued), else the first."""
    for cert in certs:
        if cert.issuer == cert.subject:
            return cert
    return certs[0]


def _recover(directory: AgentDir) -> None:
    """Finish a renewal interrupted between replacing the key and replacing the certificate."""
    if not (directory.cert_next.exists() and directory.key.exists()):
        directory.cert_next.unlink(missing_ok=True)
        return
    try:
        pending = x509.load_pem_x509_certificate(directory.cert_next.read_bytes())
        key = load_file_key(directory.key)
    except (ValueError, AgentError):
        directory.cert_next.unlink(missing_ok=True)
        return
    if _public_der(pending.public_key()) == _public_der(key.public_key()):
        os.replace(directory.cert_next, directory.cert)
        fsync_dir(directory.root)
    else:
        directory.cert_next.unlink(missing_ok=True)


def _install(directory: AgentDir, cert: x509.Certificate, chain: list[x509.Certificate],
             new_key_pem: bytes | None) -> None:
    """Replace cert.pem (and key.pem) atomically, keeping the previous ones as *.prev."""
    if directory.cert.exists():
        write_atomic(directory.cert_prev, directory.cert.read_bytes())
    write_atomic(directory.chain, est.pem(chain))
    write_atomic(directory.cert_next, cert.public_bytes(Encoding.PEM))
    if new_key_pem is not None:
        if directory.key.exists():
            write_private(directory.key_prev, directory.key.read_bytes())
        write_private(directory.key, new_key_pem)  # a crash here: _recover() finishes with cert.pem.next
    os.replace(directory.cert_next, directory.cert)
    fsync_dir(directory.root)


def _record_certificate(state: AgentState, cert: x509.Certificate, obtained: datetime,
                        rng: random.Random | None) -> None:
    state.serial = format(cert.serial_number, "x")
    state.not_before = iso(cert.not_valid_before_utc)
    state.not_after = iso(cert.not_valid_after_utc)
    state.obtained_at = iso(obtained)
    state.next_renewal = iso(renewal_time(cert, obtained, rng))
    entry = {"serial": state.serial, "obtained_at": state.obtained_at, "not_after": state.not_after}
    state.history = [*state.history, entry][-HISTORY:]


def _key_der(directory: AgentDir, ref: KeyRef) -> bytes | None:
    if ref.kind != "file":
        return None
    return load_file_key(directory.key).private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


def _reload(directory: AgentDir, state: AgentState) -> list[str]:
    """Give charon (and/or the --exec command) the current credential; then drop the previous one."""
    done: list[str] = []
    if state.serial is None:
        return done
    if state.vici:
        pin = read_pin_file(state.key.pin_file) if state.key.kind == "pkcs11" else None
        state.charon_key_id = load_into_charon(state.vici, state.key, _key_der(directory, state.key), pin,
                                               directory.certificate(), directory.chain_certificates(),
                                               state.charon_key_id)
        done.append("vici")
    if state.exec_cmd:
        run_hook(state.exec_cmd, directory.root, state.serial)
        done.append("exec")
    state.loaded_serial = state.serial
    _forget_previous(directory, state)
    return done


def _forget_previous(directory: AgentDir, state: AgentState) -> None:
    """The new credential is in use: the previous key and certificate go."""
    directory.key_prev.unlink(missing_ok=True)
    directory.cert_prev.unlink(missing_ok=True)
    previous = state.previous_key
    if previous is not None and previous.kind == "pkcs11" and previous.label != state.key.label:
        destroy_token_key(previous)
    state.previous_key = None


# -- enroll ---------------------------------------------------------------------------------------

@dataclass
class EnrollOptions:
    server: str
    token: str
    identity: str
    directory: Path
    profile: str = "device"
    ca_fingerprint: str | None = None
    cacert: Path | None = None
    key_type: str = "ec-p256"
    pkcs11_module: str | None = None
    token_label: str | None = None
    pin_file: str | None = None
    vici: str | None = None
    exec_cmd: str | None = None
    keep_key: bool = False


def enroll(options: EnrollOptions, rng: random.Random | None = None) -> dict[str, Any]:
    """First enrollment with a one-time token: trust, key, CSR, simpleenroll, files, reload."""
    if (options.ca_fingerprint is None) == (options.cacert is None):
        raise UsageError("give exactly one of --ca-fingerprint and --cacert: the CA to trust")
    token_id, sep, secret = options.token.partition(":")
    if not sep or not token_id or not secret:
        raise UsageError("--token must be ID:SECRET as `vpnca token create` printed it")
    if options.profile not in PROFILES:
        raise UsageError(f"--profile must be one of {', '.join(PROFILES)}")
    if options.key_type not in KEY_TYPES:
        raise UsageError(f"--key-type must be one of {', '.join(KEY_TYPES)}")
    on_token = options.pkcs11_module is not None or options.token_label is not None
    if on_token and not (options.pkcs11_module and options.token_label and options.pin_file):
        raise UsageError("a key on a PKCS#11 token needs --pkcs11-module, --token-label and --pin-file")
    identity = parse_identity(options.identity)
    endpoint = est.Endpoint.parse(options.server)

    # trust first: nothing carrying the token goes out before the server verified against the anchor
    if options.cacert is not None:
        try:
            anchor_certs = x509.load_pem_x509_certificates(options.cacert.read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--cacert {options.cacert}: {exc}") from exc
        anchor = _anchor_of(anchor_certs)
        anchor_pem = est.pem(anchor_certs)
    else:
        assert options.ca_fingerprint is not None
        anchor = est.bootstrap_anchor(endpoint, est.normalise_fingerprint(options.ca_fingerprint))
        anchor_pem = est.pem([anchor])
    client = est.EstClient(endpoint, anchor_pem)
    chain = client.cacerts()  # over verified TLS

    directory = AgentDir(prepare_dir(options.directory))
    with locked(directory):
        previous = directory.load() if directory.state.exists() else None
        new_key_pem: bytes | None = None
        key: SigningKey
        if on_token:
            assert options.pkcs11_module and options.token_label and options.pin_file
            made = generate_token_key(options.key_type, module=options.pkcs11_module,
                                      token_label=options.token_label, pin_file=str(Path(options.pin_file)))
            key, ref = made.key, made.ref
        else:
            key = generate_file_key(options.key_type)
            new_key_pem = key_pem(key)
            ref = KeyRef(kind="file", algorithm=options.key_type, path=str(directory.key))
        try:
            cert = client.simpleenroll(build_csr(identity, key), options.token, options.profile)
            _check_issued(cert, key, chain)
        except AgentError:
            if ref.kind == "pkcs11":
                with contextlib.suppress(AgentError):
                    destroy_token_key(ref)
            raise
        obtained = now_utc()
        write_atomic(directory.anchor, anchor_pem)
        _install(directory, cert, chain, new_key_pem)
        if previous is not None and previous.key.kind == "file" and ref.kind == "pkcs11":
            directory.key.unlink(missing_ok=True)  # re-enrolled onto a token: no file key left behind
        state = AgentState(server=endpoint.url, trust_anchor_sha256=est.fingerprint(anchor),
                           profile=options.profile, identity=identity.value, key=ref,
                           keep_key=options.keep_key, vici=options.vici, exec_cmd=options.exec_cmd,
                           previous_key=previous.key if previous is not None and previous.key.kind == "pkcs11"
                           else None,
                           charon_key_id=previous.charon_key_id if previous is not None else None)
        _record_certificate(state, cert, obtained, rng)
        state.last_run = state.last_success = iso(obtained)
        directory.save(state)
        reloaded = _reload_logged(directory, state)
        directory.save(state)
    return log_event(directory, "agent.enrolled", identity=state.identity, profile=state.profile,
                     serial=state.serial, not_after=state.not_after, next_renewal=state.next_renewal,
                     key=ref.kind, token_id=token_id, reloaded=reloaded, error=state.last_error)


def _reload_logged(directory: AgentDir, state: AgentState) -> list[str] | None:
    """Reload, recording a failure as the last error (the certificate is in place either way; the
    next run loads it again)."""
    if not (state.vici or state.exec_cmd):
        _forget_previous(directory, state)
        return None
    try:
        return _reload(directory, state)
    except AgentError as exc:
        state.last_error = f"reload: {exc}"
        return None


# -- renew ----------------------------------------------------------------------------------------

def renew(path: Path, *, force: bool = False, keep_key: bool | None = None,
          rng: random.Random | None = None) -> dict[str, Any]:
    """One renewal check: renew if due (or `force`), and make sure charon holds the current credential."""
    directory = AgentDir(path)
    with locked(directory):
        state = directory.load()
        _recover(directory)
        now = now_utc()
        state.last_run = iso(now)
        try:
            due = force or (state.next_renewal_time() or now) <= now
            if not due and _ca_asks_to_renew(directory, state, now):  # `vpnca renew-early`, a revocation
                due = True
                log_event(directory, "agent.renew_early", serial=state.serial,
                          reason="the CA suggests renewing now (renewalInfo)")
            if not due:
                reloaded = _ensure_loaded(directory, state)
                state.failures = 0
                directory.save(state)
                return log_event(directory, "agent.not_due", serial=state.serial, not_after=state.not_after,
                                 next_renewal=state.next_renewal, reloaded=reloaded)
            old_serial = state.serial
            _renew(directory, state, now, state.keep_key if keep_key is None else keep_key, rng)
        except AgentError as exc:
            state.failures += 1
            state.last_error = _explain(exc, state, directory)
            directory.save(state)
            log_event(directory, "agent.renewal_failed", stream=sys.stdout, serial=state.serial,
                      not_after=state.not_after, failures=state.failures, error=state.last_error,
                      needs_enrollment=isinstance(exc, NeedsEnrollment) or None)
            raise type(exc)(state.last_error) from exc
        state.failures = 0
        state.last_error = None
        state.last_success = iso(now_utc())
        directory.save(state)
        reloaded = _reload_logged(directory, state)
        directory.save(state)
    return log_event(directory, "agent.renewed", identity=state.identity, serial=state.serial,
                     renewed=old_serial, not_after=state.not_after, next_renewal=state.next_renewal,
                     reloaded=reloaded, error=state.last_error)


def _explain(exc: AgentError, state: AgentState, directory: AgentDir) -> str:
    if not isinstance(exc, NeedsEnrollment):
        return str(exc)
    expired = state.not_after_time()
    when = (f"the certificate {state.serial} expired at {state.not_after}"
            if expired is not None and expired <= now_utc() else f"certificate {state.serial}")
    return (f"{exc}; {when}: re-enrollment needs a current certificate, so a new enrollment token is "
            f"needed: vpnca token create --id {state.identity} (on the CA), then here: vpnca agent enroll "
            f"--server {state.server} --ca-fingerprint {state.trust_anchor_sha256} --token ID:SECRET "
            f"--id {state.identity} --profile {state.profile} --dir {directory.root}")


def _ensure_loaded(directory: AgentDir, state: AgentState) -> list[str] | None:
    """charon restarted, or the last reload failed: load the current credential again."""
    if not (state.vici or state.exec_cmd):
        return None
    pending = state.loaded_serial != state.serial
    if not pending and state.vici:
        pending = state.serial not in loaded_serials(state.vici)
    if not pending:
        return None
    reloaded = _reload(directory, state)
    state.last_error = None
    return reloaded


def _ca_asks_to_renew(directory: AgentDir, state: AgentState, now: datetime) -> bool:
    """Whether the CA's renewal window for the current certificate has begun (ACME renewalInfo)."""
    client = est.EstClient(est.Endpoint.parse(state.server), directory.anchor.read_bytes())
    start = client.renewal_window_start(directory.certificate())
    return start is not None and start <= now


def _renew(directory: AgentDir, state: AgentState, now: datetime, keep_key: bool,
           rng: random.Random | None) -> None:
    endpoint = est.Endpoint.parse(state.server)
    client = est.EstClient(endpoint, directory.anchor.read_bytes())
    chain = client.cacerts()  # each run: a new sub-CA or root is picked up; the anchor stays pinned
    if est.pem(chain) != (directory.chain.read_bytes() if directory.chain.exists() else b""):
        write_atomic(directory.chain, est.pem(chain))
    current = directory.certificate()
    expired = now >= current.not_valid_after_utc
    try:
        san: x509.SubjectAlternativeName | None = \
            current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    old_ref = state.key
    new_key_pem: bytes | None = None
    key: SigningKey
    if old_ref.kind == "file":
        key = load_file_key(directory.key) if keep_key else generate_file_key(old_ref.algorithm)
        new_key_pem = None if keep_key else key_pem(key)
        new_ref = old_ref
    else:
        assert old_ref.module and old_ref.token_label and old_ref.pin_file
        made = token_key(old_ref) if keep_key else generate_token_key(
            old_ref.algorithm, module=old_ref.module, token_label=old_ref.token_label,
            pin_file=old_ref.pin_file)
        key, new_ref = made.key, made.ref
    csr = csr_for_subject(current.subject, san, key)
    try:
        if old_ref.kind == "file":
            cert = client.simplereenroll(csr, directory.cert, directory.key, expired=expired)
        else:
            assert old_ref.key_id and old_ref.module
            cert = est.pki_reenroll(endpoint, directory.anchor, directory.cert, old_ref.key_id,
                                    old_ref.module,
                                    read_pin_file(old_ref.pin_file), csr, directory.root, expired=expired)
        _check_issued(cert, key, chain)
    except AgentError:
        if new_ref is not old_ref:
            with contextlib.suppress(AgentError):
                destroy_token_key(new_ref)
        raise
    _install(directory, cert, chain, new_key_pem)
    if new_ref is not old_ref:
        state.previous_key = old_ref
        state.key = new_ref
    _record_certificate(state, cert, now_utc(), rng)


# -- run ------------------------------------------------------------------------------------------

def run(path: Path, *, check_every: float, retry_max: float = 3600.0, keep_key: bool | None = None,
        stop: threading.Event | None = None) -> int:
    """The daemon: renew when due, retry with exponential backoff, until SIGTERM/SIGINT."""
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    retry_base = min(60.0, check_every)
    log_event(AgentDir(path) if path.is_dir() else None, "agent.started", dir=str(path),
              check_every=check_every)
    while not stop.is_set():
        delay = check_every
        try:
            outcome = renew(path, keep_key=keep_key)
            due = parse_time(outcome.get("next_renewal"))
            if due is not None:
                delay = max(1.0, min(check_every, (due - now_utc()).total_seconds()))
        except NeedsEnrollment:
            delay = max(check_every, retry_max)  # nothing will change until somebody enrolls again
        except UsageError as exc:
            print(f"vpnca agent: error: {exc}", file=sys.stderr, flush=True)
            delay = max(check_every, retry_max) if not path.exists() else check_every
        except AgentError:
            failures = _failures(path)
            delay = min(max(retry_max, check_every), retry_base * 2 ** max(0, failures - 1))
        stop.wait(delay)
    log_event(AgentDir(path) if path.is_dir() else None, "agent.stopped", dir=str(path))
    return 0


def _failures(path: Path) -> int:
    try:
        return AgentDir(path).load().failures
    except AgentError:
        return 1


# -- status ---------------------------------------------------------------------------------------

def status(path: Path) -> dict[str, Any]:
    directory = AgentDir(path)
    state = directory.load()
    now = now_utc()
    not_after = state.not_after_time()
    due = state.next_renewal_time()
    return {
        "dir": str(directory.root), "server": state.server, "identity": state.identity,
        "profile": state.profile, "trust_anchor_sha256": state.trust_anchor_sha256, "serial": state.serial,
        "not_before": state.not_before,
        "not_after": state.not_after, "expired": bool(not_after and not_after <= now),
        "next_renewal": state.next_renewal, "renewal_due": bool(due and due <= now),
        "key": {k: v for k, v in vars(state.key).items() if v is not None},
        "vici": state.vici, "loaded_serial": state.loaded_serial, "last_run": state.last_run,
        "last_success": state.last_success, "last_error": state.last_error, "failures": state.failures,
    }


def remaining(value: str | None) -> timedelta | None:
    parsed = parse_time(value)
    return parsed - now_utc() if parsed else None
