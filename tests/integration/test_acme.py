"""ACME (RFC 8555) against a running `vpnca serve`: the `acme` client library from PyPI for whole
orders, hand-made JWS for what a well-behaved client never sends. Validation runs on loopback:
a real DNS server (A and TXT records) and a real HTTP server answering http-01."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import ssl
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from josepy.jwa import ES256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from tests.conftest import CaHome, RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import free_port, remember_secret, require_tool, run
from tests.integration.acme_peers import Http01Server, LoopbackDns, acme_peers

GATEWAY = "vpn.example.com"
DNS01_NAME = "gw2.example.com"
LOOPBACK_IP = "127.0.0.1"
CERTBOT_NAME = "certbot.example.com"


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[LoopbackDns, Http01Server]]:
    with acme_peers() as (dns_server, http_server):
        for name in (GATEWAY, DNS01_NAME, "other.example.com", CERTBOT_NAME):
            dns_server.records[(name, "A")] = [LOOPBACK_IP]
        yield dns_server, http_server


def configure_acme(ca: CaHome, dns_server: LoopbackDns, http_server: Http01Server | int) -> None:
    """Point the validator at the loopback DNS server and at the http-01 responder's port."""
    port = http_server if isinstance(http_server, int) else http_server.port
    config = ca.home / "vpnca.toml"
    text = config.read_text().replace('"192.0.2.0/24"]', '"192.0.2.0/24", "127.0.0.0/8"]')
    config.write_text(text + f'\n[acme]\nhttp01_port = {port}\n'
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
    out = run([sys.executable, "-m", "vpnca.cli", "acme", "eab", "create", *args, "--json"],
              env=ca.env).stdout
    created: dict[str, str] = json.loads(out)
    remember_secret(created["hmac_key"])
    return created


def account_key(kind: str = "ec") -> JWK:
    if kind == "rsa":
        return JWKRSA(key=rsa.generate_private_key(65537, 3072))
    return JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def acme_client(server: RunningServer, key: JWK, alg: JWASignature = ES256) -> client.ClientV2:
    # ClientNetwork hands verify_ssl to requests' `verify`, which takes a CA bundle's path as well as a
    # bool; acme annotates it `bool` only, so the path (our root, not the system's) is cast to pass
    ca_bundle = cast(bool, str(server.ca.home / "ca/root.pem"))
    net = client.ClientNetwork(key, alg=alg, verify_ssl=ca_bundle, user_agent="vpnca-tests")
    return client.ClientV2(client.ClientV2.get_directory(directory_url(server), net), net)


def register(server: RunningServer, key: JWK, eab: dict[str, str],
             alg: JWASignature = ES256) -> client.ClientV2:
    acme = acme_client(server, key, alg)
    binding = messages.ExternalAccountBinding.from_data(
        account_public_key=key.public_key(), kid=eab["kid"], hmac_key=eab["hmac_key"],
        directory=acme.directory)
    acme.net.account = acme.new_account(messages.NewRegistration.from_data(
        email="netops@example.com", terms_of_service_agreed=True, external_account_binding=binding))
    return acme


def new_csr(names: list[str], ips: list[str] = ()) -> tuple[bytes, bytes]:  # type: ignore[assignment]
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    addresses = [ipaddress.ip_address(i) for i in ips]
    return pem, crypto_util.make_csr(pem, names or None, ipaddrs=addresses or None)


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


# -- hand-made JWS: what a well-behaved client library never sends ----------------------------------

def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RawAcme:
    """Signs and posts JWS by hand, so a test can send replays, wrong keys and bad headers."""

    def __init__(self, server: RunningServer) -> None:
        self.http = httpx.Client(verify=ssl.create_default_context(cafile=server.ca.home / "ca/root.pem"),
                                 timeout=30)
        self.directory: dict[str, Any] = self.http.get(directory_url(server)).json()
        self.base = directory_url(server).rsplit("/", 1)[0]

    def nonce(self) -> str:
        response = self.http.head(self.directory["newNonce"])
        assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
        return response.headers["Replay-Nonce"]

    def send(self, url: str, body: bytes | str,
             content_type: str = "application/jose+json") -> httpx.Response:
        return self.http.post(url, content=body, headers={"Content-Type": content_type})

    def post(self, url: str, payload: dict[str, Any] | None, key: Any, *, kid: str | None = None,
             nonce: str | None = None, header: dict[str, Any] | None = None) -> httpx.Response:
        return self.send(url, signed(url, payload, key, kid=kid, nonce=nonce or self.nonce(), header=header))


def public_jwk(key: Any) -> dict[str, str]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    return dict(JWK.load(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())).public_key().to_partial_json())


def signed(url: str, payload: dict[str, Any] | None, key: Any, *, kid: str | None = None,
           nonce: str | None = None, header: dict[str, Any] | None = None) -> str:
    """A flattened JWS: ES256/ES384 for P-256/P-384 keys, EdDSA for Ed25519, RS256 for RSA."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "RS256"
    else:
        alg = "ES384" if key.curve.name == "secp384r1" else "ES256"
    protected: dict[str, Any] = {"alg": alg, "url": url, **({"nonce": nonce} if nonce else {})}
    protected.update({"kid": kid} if kid else {"jwk": public_jwk(key)})
    protected.update(header or {})
    payload_bytes = json.dumps(payload).encode() if payload is not None else b""
    signing_input = f"{b64url(json.dumps(protected).encode())}.{b64url(payload_bytes)}"
    if alg == "EdDSA":
        signature = key.sign(signing_input.encode())
    elif alg == "RS256":
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        size, digest = (48, hashes.SHA384()) if alg == "ES384" else (32, hashes.SHA256())
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(digest)))
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    protected_b64, payload_b64 = signing_input.split(".")
    return json.dumps({"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)})


def eab_binding(eab: dict[str, str], url: str, key: Any) -> dict[str, str]:
    import base64
    import hashlib
    import hmac

    protected = b64url(json.dumps({"alg": "HS256", "kid": eab["kid"], "url": url}).encode())
    payload = b64url(json.dumps(public_jwk(key)).encode())
    secret = base64.urlsafe_b64decode(eab["hmac_key"] + "=" * (-len(eab["hmac_key"]) % 4))
    mac = hmac.new(secret, f"{protected}.{payload}".encode(), hashlib.sha256).digest()
    return {"protected": protected, "payload": payload, "signature": b64url(mac)}


def problem(response: httpx.Response) -> str:
    assert response.headers["Content-Type"] == "application/problem+json", response.text
    assert "Replay-Nonce" in response.headers  # so the client can retry
    document = response.json()
    assert document["status"] == response.status_code
    return str(document["type"]).removeprefix("urn:ietf:params:acme:error:")


def acme_code(call: Any) -> str:
    with pytest.raises(messages.Error) as raised:
        call()
    return str(raised.value.code)


def test_refusals_carry_the_rfc_8555_problem_types(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    raw = RawAcme(server)
    eab = eab_create(server.ca, GATEWAY, LOOPBACK_IP)
    key = ec.generate_private_key(ec.SECP256R1())
    created = raw.post(raw.directory["newAccount"], {"termsOfServiceAgreed": True,
                       "externalAccountBinding": eab_binding(eab, raw.directory["newAccount"], key)}, key)
    assert created.status_code == 201, created.text
    account = created.headers["Location"]
    assert raw.post(account, None, key, kid=account).json()["status"] == "valid"

    # a replayed nonce
    nonce = raw.nonce()
    assert raw.post(account, None, key, kid=account, nonce=nonce).status_code == 200
    assert problem(raw.post(account, None, key, kid=account, nonce=nonce)) == "badNonce"
    assert problem(raw.post(account, None, key, kid=account, nonce="made-up")) == "badNonce"
    # a JWS signed by the wrong key for this account
    intruder = ec.generate_private_key(ec.SECP256R1())
    wrong = raw.post(account, None, intruder, kid=account)
    assert (problem(wrong), wrong.status_code) == ("malformed", 400) and "signature" in wrong.json()["detail"]
    # an unknown account: by kid, and by key with onlyReturnExisting
    assert problem(raw.post(raw.directory["newOrder"], {"identifiers": [{"type": "dns", "value": GATEWAY}]},
                            key, kid=f"{raw.base}/acct/no-such-account")) == "accountDoesNotExist"
    assert problem(raw.post(raw.directory["newAccount"], {"onlyReturnExisting": True}, intruder)) == \
        "accountDoesNotExist"
    # algorithms: none, HMAC, and a key that does not fit the algorithm
    for alg in ("none", "HS256", "RS1"):
        response = raw.post(account, None, key, kid=account, header={"alg": alg})
        assert problem(response) == "badSignatureAlgorithm" and "ES256" in response.json()["algorithms"]
    assert problem(raw.post(account, None, key, kid=account, header={"alg": "ES384"})) == \
        "badSignatureAlgorithm"
    # the JWS url must be the URL posted to
    assert problem(raw.send(account, signed(f"{account}x", None, key, kid=account, nonce=raw.nonce()))) == \
        "unauthorized"
    # external account binding: missing, reused, forged
    fresh = ec.generate_private_key(ec.SECP256R1())
    assert problem(raw.post(raw.directory["newAccount"], {"termsOfServiceAgreed": True}, fresh)) == \
        "externalAccountRequired"
    assert problem(raw.post(raw.directory["newAccount"], {
        "externalAccountBinding": eab_binding(eab, raw.directory["newAccount"], fresh)}, fresh)) == \
        "unauthorized"
    forged = {**eab_create(server.ca, GATEWAY), "hmac_key": b64url(b"k" * 32)}
    assert problem(raw.post(raw.directory["newAccount"], {
        "externalAccountBinding": eab_binding(forged, raw.directory["newAccount"], fresh)}, fresh)) == \
        "unauthorized"
    # identifiers: one this account may not have, one outside the CA's policy, a wildcard, an unknown type
    for identifiers, expected in (
        ([{"type": "dns", "value": "other.example.com"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "vpn.example.org"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "*.example.com"}], "rejectedIdentifier"),
        ([{"type": "email", "value": "a@example.com"}], "unsupportedIdentifier"),
        ([], "malformed"),
    ):
        refused = raw.post(raw.directory["newOrder"], {"identifiers": identifiers}, key, kid=account)
        assert problem(refused) == expected
    # bad bodies: not JSON, wrong media type, too large, not a flattened JWS
    assert problem(raw.send(account, "not json")) == "malformed"
    assert raw.send(account, "{}", content_type="application/json").status_code == 415
    oversized = raw.send(account, "x" * (1024 * 1024))
    assert (problem(oversized), oversized.status_code) == ("malformed", 413)
    not_base64 = json.dumps({"protected": "!!", "payload": "", "signature": ""})
    assert problem(raw.send(account, not_base64)) == "malformed"
    # resources are read with POST-as-GET: a plain GET is a problem document too, never a bare 404/405
    got = raw.http.get(account)
    assert (problem(got), got.status_code, got.headers["Allow"]) == ("malformed", 405, "POST")
    assert raw.http.get(raw.directory["newOrder"].replace("new-order", "directory")).status_code == 200


def test_order_refusals_with_the_acme_library(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    acme = register(server, account_key(), eab_create(server.ca, GATEWAY, LOOPBACK_IP, "other.example.com"))
    # an identifier the account may not have
    assert acme_code(lambda: acme.new_order(new_csr(["forbidden.example.com"])[1])) == "rejectedIdentifier"
    # finalize before the authorizations are valid
    order = acme.new_order(new_csr([GATEWAY])[1])
    assert acme_code(lambda: acme.begin_finalization(order)) == "orderNotReady"
    # a CSR that differs from the order: other names, then an extra one; the order stays ready
    answer(acme, order, peers)
    order = acme.poll_authorizations(order, deadline())
    assert acme_code(lambda: acme.begin_finalization(
        order.update(csr_pem=new_csr(["other.example.com"])[1]))) == "badCSR"
    assert acme_code(lambda: acme.begin_finalization(
        order.update(csr_pem=new_csr([GATEWAY], [LOOPBACK_IP])[1]))) == "badCSR"
    issued = chain_verifies(server, acme.finalize_order(order, deadline()).fullchain_pem, server.ca.home)
    # a wrong http-01 answer: the challenge and the authorization fail, and so does the order
    failing = acme.new_order(new_csr(["other.example.com"])[1])
    answer(acme, failing, peers, wrong=True)
    with pytest.raises(errors.ValidationError) as failed:
        acme.poll_authorizations(failing, deadline())
    challenge_errors = [c.error for a in failed.value.failed_authzrs for c in a.body.challenges if c.error]
    assert [e.code for e in challenge_errors] == ["incorrectResponse"]
    assert acme_code(lambda: acme.begin_finalization(failing)) == "orderNotReady"
    # nothing half-written: only the one good certificate, and every ACME refusal was logged
    certificates = [c for c in server.ca.store.list_certificates() if c.protocol == "acme"]
    assert [c.status for c in certificates] == ["valid"]
    log = server.log.read_text()
    assert '"problem":"badCSR"' in log and '"problem":"orderNotReady"' in log
    assert issued.serial_number == int(certificates[0].serial, 16)


def test_revocation_by_the_certificate_key(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    """RFC 8555 7.6: whoever holds the certificate's private key may revoke it, without an account."""
    acme = register(server, account_key(), eab_create(server.ca, GATEWAY))
    key_pem, csr = new_csr([GATEWAY])
    order = acme.new_order(csr)
    answer(acme, order, peers)
    cert = chain_verifies(server, acme.poll_and_finalize(order, deadline()).fullchain_pem, server.ca.home)
    raw = RawAcme(server)
    payload = {"certificate": b64url(cert.public_bytes(serialization.Encoding.DER)), "reason": 1}
    stranger = ec.generate_private_key(ec.SECP384R1())
    assert problem(raw.post(raw.directory["revokeCert"], payload, stranger)) == "unauthorized"
    assert problem(raw.post(raw.directory["revokeCert"], {**payload, "reason": 6},
                            serialization.load_pem_private_key(key_pem, None))) == "badRevocationReason"
    revoked = raw.post(raw.directory["revokeCert"], payload,
                       serialization.load_pem_private_key(key_pem, None))
    assert revoked.status_code == 200, revoked.text
    record = server.ca.store.get_certificate(f"{cert.serial_number:x}")
    assert record is not None and (record.status, record.revocation_reason) == ("revoked", "keyCompromise")
    assert problem(raw.post(raw.directory["revokeCert"], payload,
                            serialization.load_pem_private_key(key_pem, None))) == "alreadyRevoked"
    leaf = server.ca.home / "revoked-by-key.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert "revoked" in ocsp_status(server, leaf)


def test_key_rollover_algorithms_and_deactivation(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    raw = RawAcme(server)
    old, new = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    eab = eab_create(server.ca, GATEWAY)
    account = raw.post(raw.directory["newAccount"], {
        "externalAccountBinding": eab_binding(eab, raw.directory["newAccount"], old)},
        old).headers["Location"]
    # keyChange: the inner JWS, signed by the new (Ed25519) key, names the account and the old key
    url = raw.directory["keyChange"]
    inner = json.loads(signed(url, {"account": account, "oldKey": public_jwk(old)}, new))
    rolled = raw.post(url, inner, old, kid=account)
    assert rolled.status_code == 200, rolled.text
    # the old key no longer works: the account key is Ed25519 now, so ES256 does not even fit it
    assert problem(raw.post(account, None, old, kid=account)) == "badSignatureAlgorithm"
    assert raw.post(account, None, new, kid=account).status_code == 200  # EdDSA
    found = raw.post(raw.directory["newAccount"], {"onlyReturnExisting": True}, new)
    assert (found.status_code, found.headers["Location"]) == (200, account)
    # a key another account holds is refused with 409 and that account's URL
    other_key = rsa.generate_private_key(65537, 3072)
    other = raw.post(raw.directory["newAccount"], {
        "externalAccountBinding": eab_binding(eab_create(server.ca, GATEWAY), raw.directory["newAccount"],
                                              other_key)}, other_key).headers["Location"]  # RS256
    clash = raw.post(url, json.loads(signed(url, {"account": account, "oldKey": public_jwk(new)}, other_key)),
                     new, kid=account)
    assert (clash.status_code, clash.headers["Location"]) == (409, other)
    # an inner JWS for another account, or with the wrong old key
    not_ours = json.loads(signed(url, {"account": other, "oldKey": public_jwk(new)},
                                 ec.generate_private_key(ec.SECP256R1())))
    assert problem(raw.post(url, not_ours, new, kid=account)) == "unauthorized"
    # authorization deactivation, then account deactivation: the account can do nothing more
    order = raw.post(raw.directory["newOrder"], {"identifiers": [{"type": "dns", "value": GATEWAY}]}, new,
                     kid=account)
    assert order.status_code == 201, order.text
    authz_url = order.json()["authorizations"][0]
    assert raw.post(authz_url, {"status": "deactivated"}, new, kid=account).json()["status"] == "deactivated"
    assert raw.post(order.headers["Location"], None, new, kid=account).json()["status"] == "invalid"
    deactivated = raw.post(account, {"status": "deactivated"}, new, kid=account)
    assert deactivated.json()["status"] == "deactivated"
    assert problem(raw.post(raw.directory["newOrder"], {"identifiers": [{"type": "dns", "value": GATEWAY}]},
                            new, kid=account)) == "unauthorized"
    assert problem(raw.post(other, None, new, kid=account)) == "unauthorized"
    actions = [e.action for e in server.ca.store.audit_entries()]
    assert "acme-key-change" in actions and "acme-account-update" in actions


def test_certbot_enrolls_renews_and_revokes(tmp_path: Path, softhsm, peers) -> None:  # type: ignore[no-untyped-def]
    """Debian's certbot, standalone http-01, with an external account binding."""
    certbot = require_tool("certbot")
    # certbot logs its own arguments, EAB key included: its log is kept out of the tree the
    # session-end scan reads for secrets in *our* logs
    certbot_logs = tempfile.mkdtemp(prefix="vpnca-certbot-logs-")
    ca = make_ca_home(tmp_path / "home", softhsm)
    http01_port = free_port()
    configure_acme(ca, peers[0], http01_port)
    server = start_server(ca)
    try:
        eab = eab_create(ca, CERTBOT_NAME)
        dirs = ["--config-dir", str(tmp_path / "le"), "--work-dir", str(tmp_path / "le-work"),
                "--logs-dir", certbot_logs]
        env = {**ca.env, "REQUESTS_CA_BUNDLE": str(ca.home / "ca/root.pem")}
        common = ["--non-interactive", "--server", directory_url(server), *dirs]
        run([certbot, "certonly", *common, "--agree-tos", "-m", "netops@example.com", "--standalone",
             "--http-01-port", str(http01_port), "--http-01-address", LOOPBACK_IP, "-d", CERTBOT_NAME,
             "--eab-kid", eab["kid"], "--eab-hmac-key", eab["hmac_key"], "--key-type", "ecdsa",
             "--elliptic-curve", "secp384r1"], env=env)
        live = tmp_path / "le/live" / CERTBOT_NAME
        first = chain_verifies(server, (live / "fullchain.pem").read_text(), tmp_path)
        assert first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName) == [CERTBOT_NAME]

        run([certbot, "renew", *common, "--force-renewal", "--no-random-sleep-on-renew",
             "--http-01-port", str(http01_port), "--http-01-address", LOOPBACK_IP], env=env)
        renewed = chain_verifies(server, (live / "fullchain.pem").read_text(), tmp_path)
        assert renewed.serial_number != first.serial_number

        run([certbot, "revoke", *common, "--cert-path", str(live / "cert.pem"), "--reason", "keycompromise",
             "--no-delete-after-revoke"], env=env)
        status = ocsp_status(server, live / "cert.pem")
        assert "revoked" in status and "keyCompromise" in status
    finally:
        stop_server(server)
        ca.store.dispose()
        shutil.rmtree(certbot_logs, ignore_errors=True)


# -- deep JSON and stateless nonces ----------------------------------------------------------------

def es256_jws(protected: bytes, payload: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """A flattened JWS over exactly these header and payload bytes (which json.dumps could not make)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{b64url(protected)}.{b64url(payload)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return json.dumps({"protected": b64url(protected), "payload": b64url(payload),
                       "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))})


def new_account(raw: RawAcme, server: RunningServer) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    created = raw.post(raw.directory["newAccount"], {"externalAccountBinding": eab_binding(
        eab_create(server.ca, GATEWAY), raw.directory["newAccount"], key)}, key)
    assert created.status_code == 201, created.text
    return key, created.headers["Location"]


def nonce_rows(server: RunningServer) -> int:
    import sqlalchemy as sa

    with server.ca.store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM acme_nonces")).scalar_one())


def test_json_nested_a_thousand_deep_is_malformed_not_a_500(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    raw = RawAcme(server)
    key, account = new_account(raw, server)
    deep = b"[" * 1000 + b"]" * 1000
    header = json.dumps({"alg": "ES256", "kid": account, "url": account, "nonce": raw.nonce()}).encode()
    for body in (
        es256_jws(header, deep, key),  # in the payload
        es256_jws(header[:-1] + b', "x": ' + deep + b"}", b"", key),  # in the protected header
        deep.decode(),  # the body itself
        json.dumps({"protected": b64url(deep), "payload": "", "signature": ""}),
    ):
        response = raw.send(account, body)
        assert (problem(response), response.status_code) == ("malformed", 400), response.text
    log = server.log.read_text()
    assert "RecursionError" not in log and "Traceback" not in log


def test_new_nonce_writes_nothing_and_a_nonce_works_once(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    raw = RawAcme(server)
    key, account = new_account(raw, server)
    before = nonce_rows(server)
    nonces = {raw.nonce() for _ in range(100)}
    nonces |= {raw.http.get(raw.directory["newNonce"]).headers["Replay-Nonce"] for _ in range(10)}
    assert len(nonces) == 110 and nonce_rows(server) == before  # handing out nonces writes no row
    nonce = raw.nonce()
    assert raw.post(account, None, key, kid=account, nonce=nonce).status_code == 200
    assert nonce_rows(server) == before + 1  # using one does: the replay set
    replay = raw.post(account, None, key, kid=account, nonce=nonce)
    assert (problem(replay), replay.status_code) == ("badNonce", 400)
    # an unsigned request does not spend the nonce (nothing is written for it)
    fresh = raw.nonce()
    intruder = ec.generate_private_key(ec.SECP256R1())
    assert problem(raw.post(account, None, intruder, kid=account, nonce=fresh)) == "malformed"
    assert raw.post(account, None, key, kid=account, nonce=fresh).status_code == 200


def test_a_nonce_with_a_bad_mac_or_out_of_its_lifetime_is_bad_nonce(server: RunningServer, peers) -> None:  # type: ignore[no-untyped-def]
    import time

    from enrollment.acme.nonces import Nonces
    from vpnca.store.acme import AcmeRepository

    raw = RawAcme(server)
    key, account = new_account(raw, server)
    good = raw.nonce()
    forged = good[:30] + ("A" if good[30] != "A" else "B") + good[31:]
    assert problem(raw.post(account, None, key, kid=account, nonce=forged)) == "badNonce"
    # nonces minted here with the key from the database: the server takes a fresh one (the key is
    # shared by every worker and machine), and refuses one too old or from the future
    lifetime = server.ca.settings.acme.nonce_lifetime
    repo = AcmeRepository(server.ca.store)
    ours = Nonces(repo.nonce_key, lifetime).make()
    assert raw.post(account, None, key, kid=account, nonce=ours).status_code == 200
    for skew in (-lifetime.total_seconds() - 1, 3600):
        def clock(skew: float = skew) -> float:  # bound now, not when the loop has moved on
            return time.time() + skew

        minted = Nonces(repo.nonce_key, lifetime, clock=clock).make()
        response = raw.post(account, None, key, kid=account, nonce=minted)
        assert (problem(response), response.status_code) == ("badNonce", 400)
    assert raw.post(account, None, key, kid=account, nonce=good).status_code == 200  # still unused


def test_used_nonces_are_forgotten_once_expired(server: RunningServer) -> None:
    from datetime import UTC, datetime, timedelta

    from vpnca.store.acme import AcmeRepository

    key = AcmeRepository(server.ca.store).nonce_key()
    first = AcmeRepository(server.ca.store)  # a fresh repository sweeps on its first use
    assert first.use_nonce("expired-long-ago", datetime.now(UTC) - timedelta(hours=2))
    assert not first.use_nonce("expired-long-ago", datetime.now(UTC) - timedelta(hours=2))  # a replay
    assert AcmeRepository(server.ca.store).use_nonce("fresh-one", datetime.now(UTC) + timedelta(hours=1))
    assert AcmeRepository(server.ca.store).use_nonce("expired-long-ago", datetime.now(UTC))  # swept
    assert AcmeRepository(server.ca.store).nonce_key() == key  # the key never expires
