"""`vpnca gateway status`: for every managed gateway, whether its charon answers, its certificate's
expiry, its tunnels up, its last push and its last error."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from vpnca.config import GatewaySettings, Settings
from vpnca.gateway import fleet
from vpnca.gateway.credentials import GatewayFiles
from vpnca.gateway.sessions import ike_sas
from vpnca.identities import identities_of_certificate
from vpnca.x509util import serial_hex


def _own_certificate(settings: Settings, gw: GatewaySettings, charon_certs: list[x509.Certificate]) \
        -> x509.Certificate | None:
    """The gateway's certificate: the one vpnca holds, else (an agent's) the one charon has of its id."""
    files = GatewayFiles.of(settings, gw)
    if gw.credentials == "ca" and files.cert.exists():
        return files.certificate()
    mine = [c for c in charon_certs
            if gw.id.lower() in {str(i).lower() for i in identities_of_certificate(c)}]
    return max(mine, key=lambda c: c.not_valid_after_utc) if mine else None


def gateway_status(settings: Settings, gw: GatewaySettings) -> dict[str, Any]:
    row: dict[str, Any] = {"gateway": fleet.name_of(settings, gw), "id": gw.id, "vici": gw.vici_socket,
                           "credentials": gw.credentials, "groups": list(gw.groups), "reachable": False,
                           "tunnels_up": None, "serial": None, "not_after": None}
    own_certs: list[x509.Certificate] = []
    try:
        with fleet.session(settings, gw) as session:
            sas = ike_sas(session)
            own_certs = [x509.load_der_x509_certificate(bytes(c["data"]))
                         for c in session.list_certs({"type": "X509", "flag": "NONE"})
                         if c.get("has_privkey", b"no") == b"yes"]
        row["reachable"] = True
        row["tunnels_up"] = sum(1 for sa in sas if sa.get("state") == "ESTABLISHED")
    except (fleet.GatewayError, OSError) as exc:
        row["unreachable_because"] = str(exc)
    cert = _own_certificate(settings, gw, own_certs)
    if cert is not None:
        row["serial"] = serial_hex(cert.serial_number)
        row["not_after"] = cert.not_valid_after_utc.isoformat(timespec="seconds")
    recorded = fleet.read_status(settings, gw)
    row["last_push"] = recorded.get("last_push")
    row["last_error"] = recorded.get("last_error")
    row["last_error_at"] = recorded.get("last_error_at")
    return row


def fleet_status(settings: Settings) -> list[dict[str, Any]]:
    return [gateway_status(settings, gw) for gw in fleet.managed(settings)]
