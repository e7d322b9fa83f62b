"""Connecting to a charon's VICI socket: `unix:///path` on this host, or `tls://host:port` through
`vpnca agent vici-relay` on a gateway host (mutual TLS; VICI itself has no authentication).

Shared by the CA side (`vpnca.gateway`) and the endpoint agent; imports nothing of either.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import vici


class ViciUnreachable(OSError):
    """The socket could not be reached (or the TLS handshake with the relay failed)."""


@dataclass(frozen=True)
class TlsClient:
    """What the CA presents to a relay, what it trusts, and the identity the relay must show."""

    cert: Path
    key: Path
    cafile: Path
    server_name: str  # the gateway's identity: a SAN of the relay's certificate


def parse(uri: str) -> tuple[str, str]:
    """`unix:///path` -> ("unix", "/path"); `tls://host:port` -> ("tls", "host:port")."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("unix", "tls") or not rest:
        raise ValueError(f"VICI socket URI must be unix:///path or tls://host:port, not {uri!r}")
    if scheme == "tls" and rest.rpartition(":")[2].isdigit() is False:
        raise ValueError(f"VICI socket URI {uri!r} needs a port")
    return scheme, rest


def connect(uri: str, *, tls: TlsClient | None = None, timeout: float | None = 30.0) -> socket.socket:
    """A connected stream socket to charon's VICI (or to a relay in front of it)."""
    scheme, where = parse(uri)
    if scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except OSError as exc:
            sock.close()
            raise ViciUnreachable(f"cannot reach charon's VICI socket {where}: {exc.strerror or exc}") \
                from exc
        return sock
    if tls is None:
        raise ViciUnreachable(f"{uri}: no TLS client credential to present to the relay")
    host, _, port = where.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.cafile))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    try:
        raw = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise ViciUnreachable(f"cannot reach the VICI relay {where}: {exc.strerror or exc}") from exc
    try:
        return context.wrap_socket(raw, server_hostname=tls.server_name)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        raise ViciUnreachable(f"TLS with the VICI relay {where} failed: {exc}") from exc


@contextmanager
def session(uri: str, *, tls: TlsClient | None = None,
            timeout: float | None = 30.0) -> Iterator[vici.Session]:
    """A VICI session over `connect`; the socket is closed afterwards."""
    sock = connect(uri, tls=tls, timeout=timeout)
    try:
        yield vici.Session(sock)
    finally:
        sock.close()
