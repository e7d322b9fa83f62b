"""`vpnca agent vici-relay`: the CA reaches a remote gateway's charon through this relay.

It listens for mutual TLS with the gateway's own vpnca certificate (the agent directory's cert.pem,
key.pem and chain.pem, re-read for every connection, so a renewal takes effect at once), admits a
client only when its certificate chains to the pinned trust anchor and names an allowed identity
(`--allow-id`, the identity of `vpnca gateway relay-client`), and then relays bytes to charon's local
VICI unix socket. VICI has no authentication of its own: never expose it over plain TCP.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnca import vici_transport
from vpnca.agent.errors import UsageError

log = logging.getLogger("vpnca.agent.relay")
HANDSHAKE_SECONDS = 10.0


@dataclass(frozen=True)
class RelayConfig:
    directory: Path  # the agent directory: cert.pem, key.pem, chain.pem, trust-anchor.pem
    vici: str  # unix:///path of the local charon
    allow_ids: frozenset[str]  # client identities admitted (SAN values or subject CN), lower case


def _context(config: RelayConfig) -> ssl.SSLContext:
    d = config.directory
    if not (d / "key.pem").exists():
        raise UsageError(f"{d}/key.pem is missing: the relay needs the agent's certificate with a file key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(d / "trust-anchor.pem"))
    if (d / "chain.pem").exists():
        context.load_verify_locations(cafile=str(d / "chain.pem"))
    chain = (d / "cert.pem").read_bytes() + ((d / "chain.pem").read_bytes() if (d / "chain.pem").exists()
                                              else b"")
    with tempfile.NamedTemporaryFile(dir=d, prefix=".relay-chain-", suffix=".pem") as full:
        full.write(chain)
        full.flush()
        context.load_cert_chain(full.name, str(d / "key.pem"))
    return context


def peer_identities(peer: Mapping[str, Any]) -> set[str]:
    """The identities of a verified peer certificate (ssl's getpeercert() dict): SAN values and CN."""
    names = {str(value).lower() for _, value in peer.get("subjectAltName", ())}
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value).lower())
    return names


def _pump(client: ssl.SSLSocket, charon: socket.socket) -> None:
    """Relay until either side closes. TLS records buffered inside the SSL object are read first."""
    while True:
        ready: Iterable[object] = [client] if client.pending() else \
            select.select([client, charon], [], [], 300)[0]
        if not ready:
            continue
        if client in ready:
            data = client.recv(65536)
            if not data:
                return
            charon.sendall(data)
        if charon in ready:
            data = charon.recv(65536)
            if not data:
                return
            client.sendall(data)


def _serve_one(config: RelayConfig, raw: socket.socket, address: object) -> None:
    try:
        raw.settimeout(HANDSHAKE_SECONDS)
        try:
            client = _context(config).wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("vici-relay: TLS handshake with %s failed: %s", address, exc)
            return
        with client:
            names = peer_identities(client.getpeercert() or {})
            if not names & config.allow_ids:
                log.warning("vici-relay: %s presented %s, not an allowed identity", address, sorted(names))
                return
            client.settimeout(None)
            try:
                charon = vici_transport.connect(config.vici, timeout=None)
            except vici_transport.ViciUnreachable as exc:
                log.warning("vici-relay: %s", exc)
                return
            with charon:
                log.info("vici-relay: %s (%s) connected", address, ", ".join(sorted(names)))
                _pump(client, charon)
    except OSError as exc:
        log.info("vici-relay: connection from %s ended: %s", address, exc)
    finally:
        raw.close()


def serve(config: RelayConfig, host: str, port: int, *, stop: threading.Event | None = None) -> None:
    """Accept until `stop` is set (or forever), one thread per connection."""
    _context(config)  # refuse to start without usable credentials
    with socket.create_server((host, port), reuse_port=False) as server:
        server.settimeout(1.0)
        log.info("vici-relay: listening on %s:%d for %s, relaying to %s", host, port,
                 ", ".join(sorted(config.allow_ids)), config.vici)
        while stop is None or not stop.is_set():
            try:
                raw, address = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve_one, args=(config, raw, address), daemon=True,
                             name="vici-relay").start()
