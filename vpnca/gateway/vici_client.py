"""Loading the gateway's credentials and connection into charon over VICI, and reading them back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import vici
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.config import Settings
from vpnca.errors import VpncaError
from vpnca.events import emit
from vpnca.gateway import profile
from vpnca.gateway.credentials import GatewayFiles


class GatewayError(VpncaError):
    """charon is unreachable or refused what we loaded."""


@contextmanager
def vici_session(uri: str) -> Iterator[vici.Session]:
    """A VICI session on `unix:///path` (charon's socket)."""
    path = uri.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot reach charon's VICI socket {path}: {exc.strerror}") from exc
    try:
        yield vici.Session(sock)
    finally:
        sock.close()


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except vici.exception.CommandException as exc:
        raise GatewayError(f"charon refused: {exc}") from exc


def ca_chain(authority: Any) -> list[x509.Certificate]:
    """The sub-CA, then the root: the trust anchors charon checks peers against."""
    root = authority.store.current_ca("root")
    chain = [authority.certificate]
    if root is not None:
        chain.append(x509.load_der_x509_certificate(root.der))
    return chain


def push(settings: Settings, chain: list[x509.Certificate], *, uri: str | None = None) -> dict[str, Any]:
    """load-key, load-cert (gateway and CAs), load-authority, load-conn; then read back what is loaded.

    Re-loading a connection replaces its configuration for new SAs; established SAs stay up.
    """
    files = GatewayFiles.of(settings)
    gateway_der = files.certificate().public_bytes(Encoding.DER)
    sub_der = chain[0].public_bytes(Encoding.DER)
    with vici_session(uri or settings.gateway.vici_socket) as session:
        _call(session.load_key, {"type": "any", "data": files.private_key_der()})
        _call(session.load_cert, {"type": "X509", "flag": "NONE", "data": gateway_der})
        for ca in chain:
            _call(session.load_cert, {"type": "X509", "flag": "CA", "data": ca.public_bytes(Encoding.DER)})
        _call(session.load_authority, {profile.AUTHORITY: profile.authority(settings, ca_cert=sub_der)})
        _call(session.load_conn, {profile.CONNECTION: profile.connection(settings, gateway_cert=gateway_der,
                                                                         ca_cert=sub_der)})
        state = loaded(session)
    serial = format(files.certificate().serial_number, "x")
    files.pushed.write_text(serial)
    emit("gateway.pushed", serial=serial, identity=settings.gateway.id, protocol="vici",
         connections=state["connections"])
    return state


def loaded(session: vici.Session) -> dict[str, Any]:
    """What charon holds: certificates (serials), connections and SAs."""
    certs = []
    for cert in session.list_certs({"type": "X509"}):
        parsed = x509.load_der_x509_certificate(bytes(cert["data"]))
        certs.append({"serial": format(parsed.serial_number, "x"), "subject": parsed.subject.rfc4514_string(),
                      "has_privkey": cert.get("has_privkey", b"no") == b"yes"})
    conns = [name for item in session.list_conns() for name in item]
    sas = [{name: _plain(sa)} for item in session.list_sas() for name, sa in item.items()]
    return {"certificates": certs, "connections": conns, "sas": sas}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
