"""The gateways vpnca manages: `[gateway]` ("default", the bundled one) and each `[[gateways]]` entry;
how to reach each one's VICI socket (a local unix socket, or `vpnca agent vici-relay` over mutual TLS);
and what each one last did (`status.json` beside its files: last push, last error)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import vici

from vpnca import vici_transport
from vpnca.config import GatewaySettings, Settings
from vpnca.errors import ConfigError, VpncaError

DEFAULT = "default"


class GatewayError(VpncaError):
    """charon is unreachable or refused what we loaded."""


def managed(settings: Settings) -> list[GatewaySettings]:
    """Every gateway vpnca acts on: `[gateway]` when it has an id, then the `[[gateways]]` entries."""
    return ([settings.gateway] if settings.gateway.id else []) + list(settings.gateways)


def find(settings: Settings, name: str | None) -> GatewaySettings:
    """A gateway by name; None or "default" is `[gateway]`."""
    if name in (None, DEFAULT):
        return settings.gateway
    for gw in settings.gateways:
        if gw.name == name:
            return gw
    known = ", ".join([DEFAULT, *(g.name for g in settings.gateways)])
    raise ConfigError(f"no gateway {name!r} in vpnca.toml (gateways: {known})")


def is_default(settings: Settings, gw: GatewaySettings) -> bool:
    return gw is settings.gateway or gw == settings.gateway


def name_of(settings: Settings, gw: GatewaySettings) -> str:
    """How events, metrics and audit entries name the gateway: `[gateway]` by its identity (as it
    always was), an entry by its name."""
    if is_default(settings, gw):
        return gw.id or gw.vici_socket
    return gw.name


def directory(settings: Settings, gw: GatewaySettings) -> Path:
    """Where a gateway's certificate, key, session map and status live."""
    if is_default(settings, gw):
        return settings.home / "gateway"
    return settings.home / "gateways" / gw.name


def relay_client_files(settings: Settings) -> tuple[Path, Path]:
    """The certificate (with the sub-CA) and key the CA presents to `vpnca agent vici-relay`."""
    base = settings.home / "gateway"
    return base / "relay-client.pem", base / "relay-client-key.pem"


def tls_client(settings: Settings, gw: GatewaySettings) -> vici_transport.TlsClient | None:
    if not gw.vici_socket.startswith("tls://"):
        return None
    cert, key = relay_client_files(settings)
    if not cert.exists():
        raise GatewayError(f"gateway {gw.name}: no relay client certificate: run "
                           "`vpnca gateway relay-client --id ID`")
    return vici_transport.TlsClient(cert=cert, key=key, cafile=settings.home / "ca" / "root.pem",
                                    server_name=gw.id)


@contextmanager
def session(settings: Settings, gw: GatewaySettings, uri: str | None = None) -> Iterator[vici.Session]:
    """A VICI session with the gateway's charon; unreachable is `GatewayError`."""
    target = uri or gw.vici_socket
    try:
        with vici_transport.session(target, tls=tls_client(settings, gw) if uri is None else None) as s:
            yield s
    except vici_transport.ViciUnreachable as exc:
        raise GatewayError(str(exc)) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


# ---- what each gateway last did -------------------------------------------------------------------

def _status_path(settings: Settings, gw: GatewaySettings) -> Path:
    return directory(settings, gw) / "status.json"


def read_status(settings: Settings, gw: GatewaySettings) -> dict[str, Any]:
    try:
        data = json.loads(_status_path(settings, gw).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def note(settings: Settings, gw: GatewaySettings, **fields: Any) -> None:
    """Merge fields into the gateway's status.json (written atomically)."""
    path = _status_path(settings, gw)
    data = read_status(settings, gw) | fields
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
