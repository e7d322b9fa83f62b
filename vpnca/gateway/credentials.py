"""The gateway's certificate and key: enrolment, renewal at 2/3 of the lifetime with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsm import generate_software_key
from vpnca.authority import Authority, IssueRequest
from vpnca.config import GatewaySettings, Settings
from vpnca.errors import ConfigError
from vpnca.files import write_private
from vpnca.gateway import fleet
from vpnca.identities import IkeIdentity
from vpnca.x509util import serial_hex, to_pem


@dataclass(frozen=True)
class GatewayFiles:
    cert: Path
    key: Path
    pushed: Path  # the serial charon was last given, so a failed push is retried

    @classmethod
    def of(cls, settings: Settings, gw: GatewaySettings | None = None) -> GatewayFiles:
        base = fleet.directory(settings, gw or settings.gateway)
        return cls(cert=base / "gateway.pem", key=base / "gateway-key.pem", pushed=base / "pushed-serial")

    def pushed_serial(self) -> str | None:
        return self.pushed.read_text().strip() if self.pushed.exists() else None

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def private_key_der(self) -> bytes:
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def enroll_gateway(authority: Authority, identity: str | None = None, *, requester: str,
                   gw: GatewaySettings | None = None) -> x509.Certificate:
    """Issue the gateway certificate with a fresh P-384 key; the key stays with the gateway files."""
    settings = authority.settings
    gw = gw or settings.gateway
    identity = identity or gw.id
    if not identity:
        raise ConfigError("no gateway identity: pass --id or set gateway.id in vpnca.toml")
    key = generate_software_key("ec-p384")
    issued = authority.issue(IssueRequest(profile="gateway", identities=(IkeIdentity.parse(identity),),
                                          public_key=key.public_key(), requester=requester,
                                          protocol="gateway"))
    files = GatewayFiles.of(settings, gw)
    files.cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files.cert.write_bytes(to_pem(issued.certificate))
    return issued.certificate


def renewal_due(authority: Authority, certificate: x509.Certificate, *,
                rng: random.Random | None = None, gw: GatewaySettings | None = None) -> datetime:
    """When to renew: 2/3 of the way from issuance to expiry, moved by up to ±jitter of the lifetime."""
    record = authority.store.get_certificate(serial_hex(certificate.serial_number))
    issued = record.created_at if record is not None else certificate.not_valid_before_utc
    lifetime = certificate.not_valid_after_utc - issued
    jitter = (rng or random).uniform(-1, 1) * (gw or authority.settings.gateway).renewal_jitter
    return issued + lifetime * (2 / 3 + jitter)


def needs_renewal(authority: Authority, files: GatewayFiles, now: datetime | None = None,
                  gw: GatewaySettings | None = None) -> bool:
    if not files.cert.exists():
        return False
    return (now or authority.clock.now()) >= renewal_due(authority, files.certificate(), gw=gw)


def issue_relay_client(authority: Authority, identity: str, *, requester: str) -> x509.Certificate:
    """The certificate (gateway profile, fresh P-384 key) the CA presents to `vpnca agent vici-relay`
    on a gateway host; the relay admits it by its identity (`--allow-id`)."""
    key = generate_software_key("ec-p384")
    issued = authority.issue(IssueRequest(profile="gateway", identities=(IkeIdentity.parse(identity),),
                                          public_key=key.public_key(), requester=requester,
                                          protocol="gateway"))
    cert_path, key_path = fleet.relay_client_files(authority.settings)
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    cert_path.write_bytes(to_pem(issued.certificate) + to_pem(authority.certificate))
    return issued.certificate
