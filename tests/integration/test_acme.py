"""ACME (RFC 8555) against a running `vpnca serve`: the `acme` client library from PyPI for whole
orders, hand-made JWS for what a well-behaved client never sends. Validation runs on loopback:
a real DNS server (A and TXT records) and a real HTTP server answering http-01."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import josepy as jose
import pytest
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import remember_secret, require_tool, run
from tests.integration.acme_peers import Http01Server, LoopbackDns, acme_peers

GATEWAY = "vpn.example.com"
DNS01_NAME = "gw2.example.com"
LOOPBACK_IP = "127.0.0.1"


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[LoopbackDns, Http01Server]]:
    with acme_peers() as (dns_server, http_server):
        for name in (GATEWAY, DNS01_NAME, "other.example.com"):
            dns_server.records[(name, "A")] = [LOOPBACK_IP]
        yield dns_server, http_server


def configure_acme(ca: CaHome, dns_server: LoopbackDns, http_server: Http01Server) -> None:
    config = ca.home / "vpnca.toml"
    text = config.read_text().replace('"192.0.2.0/24"]', '"192.0.2.0/24", "127.0.0.0/8"]')
    config.write_text(text + f'\n[acme]\nhttp01_port = {http_server.port}\n'
                      f'dns_resolver = "127.0.0.1:{dns_server.port}"\nvalidation_timeout_seconds = 5\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm, peers) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("acme") / "home", softhsm)
    configure_acme(ca, *peers)
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def directory_url(server: RunningServer) -> str:
    return f"https://localhost:{server.https_port}/acme/directory"


def eab_create(ca: CaHome, *allow: str) -> dict[str, str]:
    args = [arg for name in allow for arg in ("--allow", name)]
    out = run([sys.executable, "-m", "vpnca.cli", "acme", "eab", "create", *args, "--json"], env=ca.env).stdout
    created = json.loads(out)
    remember_secret(created["hmac_key"])
    return created


def account_key(kind: str = "ec") -> jose.JWK:
    if kind == "rsa":
        return jose.JWKRSA(key=rsa.generate_private_key(65537, 3072))
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def acme_client(server: RunningServer, key: jose.JWK, alg: Any = jose.ES256) -> client.ClientV2:
    net = client.ClientNetwork(key, alg=alg, verify_ssl=str(server.ca.home / "ca/root.pem"),
                               user_agent="vpnca-tests")
    return client.ClientV2(client.ClientV2.get_directory(directory_url(server), net), net)


def register(server: RunningServer, key: jose.JWK, eab: dict[str, str], alg: Any = jose.ES256) -> client.ClientV2:
    acme = acme_client(server, key, alg)
    binding = messages.ExternalAccountBinding.from_data(
        account_public_key=key.public_key(), kid=eab["kid"], hmac_key=eab["hmac_key"], directory=acme.directory)
    acme.net.account = acme.new_account(messages.NewRegistration.from_data(
        email="netops@example.com", terms_of_service_agreed=True, external_account_binding=binding))
    return acme


def new_csr(names: list[str], ips: list[str] = ()) -> tuple[bytes, bytes]:  # type: ignore[assignment]
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, crypto_util.make_csr(pem, names or None, ipaddrs=[ipaddress.ip_address(i) for i in ips] or None)


def answer(acme: client.ClientV2, order: messages.OrderResource, peers: tuple[LoopbackDns, Http01Server],
           kind: type[challenges.KeyAuthorizationChallenge] = challenges.HTTP01,
           wrong: bool = False) -> None:
    """Put each pending authorization's key authorization where the validator looks, then ask it to."""
    dns_server, http_server = peers
    for authz in order.authorizations:
        if authz.body.status != messages.STATUS_PENDING:
            continue
        challenge = next(c for c in authz.body.challenges if isinstance(c.chall, kind))
        response, validation = challenge.response_and_validation(acme.net.key)
        if wrong:
            validation = "not-the-key-authorization"
        if kind is challenges.HTTP01:
            http_server.tokens[challenge.chall.encode("token")] = validation
        else:
            dns_server.records[(f"_acme-challenge.{authz.body.identifier.value}", "TXT")] = [validation]
        acme.answer_challenge(challenge, response)


def deadline(seconds: float = 30) -> dt.datetime:
    return dt.datetime.now() + dt.timedelta(seconds=seconds)


def chain_verifies(server: RunningServer, fullchain: str, directory: Path) -> x509.Certificate:
    """`openssl verify` of the leaf against our root, with the sub-CA from the PEM chain ACME returned."""
    certs = x509.load_pem_x509_certificates(fullchain.encode())
    assert len(certs) == 2, "the chain is the leaf and the sub-CA"
    leaf, chain = directory / "leaf.pem", directory / "chain.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    chain.write_bytes(certs[1].public_bytes(serialization.Encoding.PEM))
    out = run([require_tool("openssl"), "verify", "-CAfile", str(server.ca.home / "ca/root.pem"),
               "-untrusted", str(chain), "-purpose", "sslserver", str(leaf)]).stdout
    assert out.strip().endswith(": OK")
    return certs[0]


def ocsp_status(server: RunningServer, leaf: Path) -> str:
    ca_dir = server.ca.home / "ca"
    return run([require_tool("openssl"), "ocsp", "-issuer", str(ca_dir / "sub.pem"), "-cert", str(leaf),
                "-url", f"{server.http}/ocsp", "-CAfile", str(ca_dir / "root.pem")]).stdout


def test_order_renew_revoke_with_the_acme_library(any_ca_home: CaHome, peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole life of a gateway certificate through ACME, on SQLite and on PostgreSQL."""
    configure_acme(any_ca_home, *peers)
    server = start_server(any_ca_home)
    try:
        eab = eab_create(any_ca_home, GATEWAY, DNS01_NAME, LOOPBACK_IP)
        acme = register(server, account_key(), eab)

        _, csr = new_csr([GATEWAY], [LOOPBACK_IP])
        order = acme.new_order(csr)
        assert {a.body.identifier.typ.name for a in order.authorizations} == {"dns", "ip"}
        answer(acme, order, peers)
        done = acme.poll_and_finalize(order, deadline())
        first = chain_verifies(server, done.fullchain_pem, tmp_path)
        san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [GATEWAY]
        assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [LOOPBACK_IP]
        eku = first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.IPSEC_IKE in eku
        assert GATEWAY in peers[1].hosts and LOOPBACK_IP in peers[1].hosts  # fetched as those names
        first_pem = tmp_path / "first.pem"
        first_pem.write_bytes(first.public_bytes(serialization.Encoding.PEM))

        # renewal: a new key, a new order; the account's valid authorizations are reused
        _, csr = new_csr([GATEWAY], [LOOPBACK_IP])
        again = acme.new_order(csr)
        assert all(a.body.status == messages.STATUS_VALID for a in again.authorizations)
        renewed = chain_verifies(server, acme.poll_and_finalize(again, deadline()).fullchain_pem, tmp_path)
        assert renewed.serial_number != first.serial_number
        renewed_pem = tmp_path / "renewed.pem"
        renewed_pem.write_bytes(renewed.public_bytes(serialization.Encoding.PEM))

        # dns-01, through the configured resolver
        _, csr = new_csr([DNS01_NAME])
        order = acme.new_order(csr)
        answer(acme, order, peers, challenges.DNS01)
        chain_verifies(server, acme.poll_and_finalize(order, deadline()).fullchain_pem, tmp_path)
        assert (f"_acme-challenge.{DNS01_NAME}", "TXT") in peers[0].queries

        # revocation, then our OCSP responder says so (and still says good for the renewed one)
        assert "good" in ocsp_status(server, first_pem)
        acme.revoke(first, 1)
        status = ocsp_status(server, first_pem)
        assert "revoked" in status and "keyCompromise" in status.replace(" ", "").replace("Reason:", "")
        assert f"{renewed_pem}: good" in ocsp_status(server, renewed_pem)
        with pytest.raises(messages.Error) as again_revoked:
            acme.revoke(first, 1)
        assert again_revoked.value.code == "alreadyRevoked"
        record = any_ca_home.store.get_certificate(f"{first.serial_number:x}")
        assert record is not None and record.protocol == "acme" and record.status == "revoked"
    finally:
        stop_server(server)
