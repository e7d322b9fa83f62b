"""Loading the gateway's credentials and connection into charon over VICI, and reading them back."""

from __future__ import annotations

from typing import Any

import vici
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vpnca.config import GatewaySettings, Settings
from vpnca.events import emit
from vpnca.gateway import fleet, profile
from vpnca.gateway.credentials import GatewayFiles
from vpnca.gateway.fleet import GatewayError

__all__ = ["GatewayError", "ca_chain", "loaded", "push"]


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except vici.exception.CommandException as exc:
        raise GatewayError(f"charon refused: {exc}") from exc


def ca_chain(authority: Any) -> list[x509.Certificate]:
    """The sub-CA, then the root: the trust anchors charon checks peers against."""
    chain: list[x509.Certificate] = authority.chain()
    return chain


def push(settings: Settings, chain: list[x509.Certificate], *, uri: str | None = None,
         gw: GatewaySettings | None = None) -> dict[str, Any]:
    """load-key and load-cert (when vpnca holds the gateway's key), the CA certificates,
    load-authority, load-conn for each connection, unload-conn for vpnca's connections no longer
    rendered; then read back what is loaded. Noted in the gateway's status (last push or last error).

    Re-loading a connection replaces its configuration for new SAs; established SAs stay up.
    """
    gw = gw or settings.gateway
    files = GatewayFiles.of(settings, gw)
    sub_der = chain[0].public_bytes(Encoding.DER)
    gateway_der = files.certificate().public_bytes(Encoding.DER) if gw.credentials == "ca" else None
    conns = profile.connections(settings, gw, gateway_cert=gateway_der, ca_cert=sub_der)
    try:
        with fleet.session(settings, gw, uri) as session:
            if gateway_der is not None:
                _call(session.load_key, {"type": "any", "data": files.private_key_der()})
                _call(session.load_cert, {"type": "X509", "flag": "NONE", "data": gateway_der})
            for ca in chain:
                _call(session.load_cert, {"type": "X509", "flag": "CA",
                                          "data": ca.public_bytes(Encoding.DER)})
            _call(session.load_authority, {profile.AUTHORITY: profile.authority(settings, ca_cert=sub_der)})
            for name, body in conns.items():
                _call(session.load_conn, {name: body})
            stale = [name for item in session.list_conns() for name in item
                     if _text(name).startswith(profile.PREFIX) and _text(name) not in conns]
            for name in stale:
                _call(session.unload_conn, {"name": _text(name)})
            state = loaded(session)
    except GatewayError as exc:
        fleet.note(settings, gw, last_error=str(exc), last_error_at=fleet.now_iso())
        raise
    serial = format(files.certificate().serial_number, "x") if gateway_der is not None else None
    if serial is not None:
        files.pushed.write_text(serial)
    fleet.note(settings, gw, last_push=fleet.now_iso(), last_pushed_serial=serial, last_error=None)
    emit("gateway.pushed", serial=serial, identity=gw.id, gateway=fleet.name_of(settings, gw),
         protocol="vici", connections=state["connections"])
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
