"""`vpnca agent vici-relay` admits only a client certificate from the CA that names an allowed identity,
and relays bytes both ways to the local VICI unix socket (here a stand-in that echoes; the relay with a
real charon is in test_gateway_fleet.py)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken
from tests.conftest import CaHome, make_ca_home
from tests.helpers import free_port
from tests.integration.gateway_lab import vpnca
from vpnca import vici_transport
from vpnca.agent.relay import RelayConfig, serve

GATEWAY_ID = "vpn2.example.com"
CONTROLLER_ID = "ca-control.example.com"


@dataclass
class Relay:
    ca: CaHome
    uri: str
    base: Path


def _echo(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)


def _client_cert(ca: CaHome, identity: str, directory: Path) -> vici_transport.TlsClient:
    cert, key = directory / f"{identity}.pem", directory / f"{identity}.key"
    vpnca(ca, "issue", "--profile", "gateway", "--id", identity, "--out", str(cert), "--key-out", str(key),
          "--chain")
    return vici_transport.TlsClient(cert=cert, key=key, cafile=ca.home / "ca/root.pem",
                                    server_name=GATEWAY_ID)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsmToken) -> Iterator[Relay]:
    """One CA, one relay (in a thread) and one stand-in VICI socket for the module."""
    tmp_path = tmp_path_factory.mktemp("relay")
    ca_home = make_ca_home(tmp_path / "home", softhsm)
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    vpnca(ca_home, "issue", "--profile", "gateway", "--id", GATEWAY_ID, "--out", str(agent_dir / "cert.pem"),
          "--key-out", str(agent_dir / "key.pem"))
    sub, root = (ca_home.home / "ca/sub.pem").read_bytes(), (ca_home.home / "ca/root.pem").read_bytes()
    (agent_dir / "chain.pem").write_bytes(sub + root)
    (agent_dir / "trust-anchor.pem").write_bytes(root)
    vici_path = tmp_path / "charon.vici"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(vici_path))
    listener.listen()
    threading.Thread(target=_echo, args=(listener,), daemon=True).start()
    port = free_port()
    stop = threading.Event()
    config = RelayConfig(directory=agent_dir, vici=f"unix://{vici_path}",
                         allow_ids=frozenset({CONTROLLER_ID}))
    thread = threading.Thread(target=serve, args=(config, "127.0.0.1", port), kwargs={"stop": stop},
                              daemon=True)
    thread.start()
    try:
        yield Relay(ca_home, f"tls://127.0.0.1:{port}", tmp_path)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()
        ca_home.store.dispose()


def _connect(uri: str, tls: vici_transport.TlsClient) -> socket.socket:
    for _ in range(50):  # the relay thread may not listen yet
        try:
            return vici_transport.connect(uri, tls=tls, timeout=10)
        except vici_transport.ViciUnreachable as exc:
            if "TLS" in str(exc):
                raise
            threading.Event().wait(0.1)
    raise AssertionError(f"{uri} does not listen")


def _round_trip(uri: str, tls: vici_transport.TlsClient) -> bytes:
    """What comes back for a VICI-framed byte: the echo when relayed, b"" when the relay hung up."""
    with _connect(uri, tls) as sock:
        sock.sendall(b"\x00\x00\x00\x01x")
        try:
            return sock.recv(4096)
        except (OSError, ssl.SSLError):
            return b""


def test_an_allowed_client_is_relayed_to_the_vici_socket(relay: Relay) -> None:
    vpnca(relay.ca, "gateway", "relay-client", "--id", CONTROLLER_ID)
    cert, key = relay.ca.home / "gateway/relay-client.pem", relay.ca.home / "gateway/relay-client-key.pem"
    tls = vici_transport.TlsClient(cert=cert, key=key, cafile=relay.ca.home / "ca/root.pem",
                                   server_name=GATEWAY_ID)
    assert _round_trip(relay.uri, tls) == b"\x00\x00\x00\x01x"


def test_a_certificate_of_another_identity_is_refused(relay: Relay) -> None:
    intruder = _client_cert(relay.ca, "intruder.example.com", relay.base)
    assert _round_trip(relay.uri, intruder) == b""


def test_a_relay_with_another_identity_than_the_gateway_is_not_trusted(relay: Relay) -> None:
    allowed = _client_cert(relay.ca, CONTROLLER_ID, relay.base)
    wrong = vici_transport.TlsClient(cert=allowed.cert, key=allowed.key, cafile=allowed.cafile,
                                     server_name="vpn3.example.com")
    with pytest.raises(vici_transport.ViciUnreachable, match="TLS"):
        _round_trip(relay.uri, wrong)


def test_a_client_without_a_certificate_is_refused(relay: Relay) -> None:
    context = ssl.create_default_context(cafile=str(relay.ca.home / "ca/root.pem"))
    host, port = relay.uri.removeprefix("tls://").split(":")
    _connect(relay.uri, _client_cert(relay.ca, CONTROLLER_ID, relay.base)).close()  # it listens
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=GATEWAY_ID) as sock:
            sock.sendall(b"\x00\x00\x00\x01x")
            answer = sock.recv(4096)
    except (OSError, ssl.SSLError):  # TLS 1.3: the refusal comes with the first read
        answer = b""
    assert answer == b""
