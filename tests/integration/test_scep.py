"""SCEP (RFC 8894) against a running `vpnca serve`, with strongSwan's `pki --scep` and bad pkiMessages."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from enrollment import scep
from tests.conftest import RunningServer, make_ca_home, start_server, stop_server
from tests.helpers import remember_secret, require_tool, run, scep_post, scep_status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, softhsm) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    ca = make_ca_home(tmp_path_factory.mktemp("scep") / "home", softhsm)
    config = ca.home / "vpnca.toml"
    config.write_text(config.read_text().replace("[profiles.gateway]\nlifetime_days = 30",
                                                 "[profiles.gateway]\nlifetime_days = 30\napproval = true")
                      + '\n[scep]\nlegacy_des3_profiles = ["gateway"]\n')
    running = start_server(ca)
    yield running
    stop_server(running)
    ca.store.dispose()


def token(server: RunningServer, identity: str, *extra: str) -> str:
    credential = run([sys.executable, "-m", "vpnca.cli", "token", "create", "--protocol", "scep",
                      "--id", identity, *extra], env=server.ca.env).stdout.strip()
    remember_secret(credential.partition(":")[2])
    return credential


def url(server: RunningServer) -> str:
    return f"{server.http}/scep"


@pytest.fixture(scope="module")
def ca_files(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("scepca")
    out = run([require_tool("pki"), "--scepca", "--url", url(server), "--caout", str(directory / "ca.pem"),
               "--raout", str(directory / "ra.pem"), "--outform", "pem"])
    files = {p.name: p for p in directory.iterdir()}
    assert any(name.startswith("ra") for name in files), out.stderr
    ra = next(p for name, p in files.items() if name.startswith("ra"))
    sub = next(p for name, p in files.items() if name.startswith("ca") and "Issuing" in
               x509.load_pem_x509_certificate(p.read_bytes()).subject.rfc4514_string())
    return {"ra": ra, "sub": sub, "root": server.ca.home / "ca/root.pem"}


def pki_scep(server: RunningServer, files: dict[str, Path], key: Path, out: Path, *args: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([require_tool("pki"), "--scep", "--url", url(server), "--in", str(key), "--cacert-enc",
                str(files["ra"]), "--cacert-sig", str(files["ra"]), "--cacert", str(files["sub"]), "--cacert",
                str(files["root"]), "--outform", "pem", *args], check=check)


def rsa_key(path: Path) -> Path:
    path.write_text(run([require_tool("pki"), "--gen", "--type", "rsa", "--size", "3072",
                         "--outform", "pem"]).stdout)
    return path


def verify(server: RunningServer, pem: Path) -> None:
    out = run([require_tool("openssl"), "verify", "-CAfile", str(server.ca.home / "ca/root.pem"),
               "-untrusted", str(server.ca.home / "ca/sub.pem"), str(pem)]).stdout
    assert out.strip().endswith(": OK")


def test_get_ca_caps_and_ca_certs(server: RunningServer, ca_files: dict[str, Path]) -> None:
    with urllib.request.urlopen(f"{url(server)}?operation=GetCACaps", timeout=30) as response:
        caps = response.read().decode().split()
    assert {"POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard", "Renewal"} <= set(caps)
    assert "DES3" in caps and "SHA-1" not in caps  # 3DES only because a legacy profile is configured
    ra = x509.load_pem_x509_certificate(ca_files["ra"].read_bytes())
    assert "SCEP RA" in ra.subject.rfc4514_string() and isinstance(ra.public_key(), rsa.RSAPublicKey)


def test_pki_scep_enrolls_with_a_challenge_password_and_renews(server: RunningServer,
                                                               ca_files: dict[str, Path],
                                                               tmp_path: Path) -> None:
    credential = token(server, "mdm1.example.com")
    first = tmp_path / "first.pem"
    result = pki_scep(server, ca_files, rsa_key(tmp_path / "k1.pem"), first, "--dn", "CN=mdm1.example.com",
                      "--san", "mdm1.example.com", "--password", credential)
    first.write_text(result.stdout)
    verify(server, first)
    second = tmp_path / "second.pem"
    result = pki_scep(server, ca_files, rsa_key(tmp_path / "k2.pem"), second, "--dn", "CN=mdm1.example.com",
                      "--san", "mdm1.example.com", "--cert", str(first), "--key", str(tmp_path / "k1.pem"))
    second.write_text(result.stdout)
    verify(server, second)
    old, new = (x509.load_pem_x509_certificate(p.read_bytes()) for p in (first, second))
    assert new.serial_number != old.serial_number and new.subject == old.subject


def test_wrong_or_reused_challenge_password_gets_failure(server: RunningServer, ca_files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    credential = token(server, "mdm2.example.com")
    wrong = pki_scep(server, ca_files, rsa_key(tmp_path / "a.pem"), tmp_path / "a.crt", "--dn",
                     "CN=mdm2.example.com", "--password", credential[:-3] + "xyz", check=False)
    assert wrong.returncode != 0 and "badRequest" in wrong.stderr and "not 'SUCCESS'" in wrong.stderr
    ok = pki_scep(server, ca_files, rsa_key(tmp_path / "b.pem"), tmp_path / "b.crt", "--dn",
                  "CN=mdm2.example.com", "--password", credential)
    assert "BEGIN CERTIFICATE" in ok.stdout
    reused = pki_scep(server, ca_files, rsa_key(tmp_path / "c.pem"), tmp_path / "c.crt", "--dn",
                      "CN=mdm2.example.com", "--password", credential, check=False)
    assert reused.returncode != 0 and "not 'SUCCESS'" in reused.stderr


def test_pending_until_approved_then_certpoll_delivers(server: RunningServer, ca_files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    credential = token(server, "gw7.example.com", "--profile", "gateway")
    key = rsa_key(tmp_path / "gw.pem")
    process = subprocess.Popen(
        [require_tool("pki"), "--scep", "--url", url(server), "--in", str(key),
         "--cacert-enc", str(ca_files["ra"]), "--cacert-sig", str(ca_files["ra"]),
         "--cacert", str(ca_files["sub"]), "--cacert", str(ca_files["root"]),
         "--dn", "CN=gw7.example.com", "--san", "gw7.example.com", "--password", credential,
         "--interval", "1", "--maxpolltime", "60", "--outform", "pem"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    pending: list[dict[str, str]] = []
    while not pending:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        listed = json.loads(run([sys.executable, "-m", "vpnca.cli", "pending", "--json"],
                                env=server.ca.env).stdout)
        pending = [p for p in listed if p["identities"] == "gw7.example.com"]
        time.sleep(0.5)
    time.sleep(2)  # at least one CertPoll answered PENDING
    run([sys.executable, "-m", "vpnca.cli", "approve", pending[0]["request_id"]], env=server.ca.env)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "PENDING" in stderr or "pending" in stderr.lower()
    cert = tmp_path / "gw7.crt"
    cert.write_text(stdout)
    verify(server, cert)


# -- bad pkiMessages, built here so that each field can be broken on purpose --------------------

def client_identity() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe.example.com")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
    return key, cert


def request(server: RunningServer, content: bytes, message_type: int = scep.PKCS_REQ) -> bytes:
    key, cert = client_identity()
    ra = x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())
    return scep.signed_message(cert, key, message_type=message_type, transaction_id="probe-1",
                               sender_nonce=os.urandom(16), content=scep.envelope(content, ra))


def test_corrupted_pkimessages_get_failinfo_and_the_server_keeps_serving(server: RunningServer) -> None:
    csr_der = b"\x30\x03\x02\x01\x00"
    good = request(server, csr_der)
    corrupt_envelope = bytearray(good)
    corrupt_envelope[-300] ^= 0xFF  # inside the encrypted content
    status, reply = scep_post(url(server), bytes(corrupt_envelope))
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_MESSAGE_CHECK)
    corrupt_signature = bytearray(good)
    corrupt_signature[-1] ^= 0x01  # the signature value is the last field
    status, reply = scep_post(url(server), bytes(corrupt_signature))
    assert status == 200 and scep_status(reply)[1] in (scep.BAD_MESSAGE_CHECK, scep.BAD_REQUEST)
    status, reply = scep_post(url(server), good)  # well-formed envelope, but not a CSR
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert scep_post(url(server), b"\x30\x82\x01\x00garbage")[0] == 400
    assert scep_post(url(server), os.urandom(100_000))[0] == 413
    with urllib.request.urlopen(f"{url(server)}?operation=GetCACaps", timeout=30) as response:
        assert b"AES" in response.read()
    assert "Traceback" not in server.log.read_text()


def pkcs_req(server: RunningServer, identity: str, credential: str, cipher: str,
             signing_time: datetime | None = None) -> bytes:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(name)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
           .add_attribute(x509.ObjectIdentifier(scep.OID_CHALLENGE_PASSWORD), credential.encode())
           .sign(key, hashes.SHA256()))
    now = datetime.now(UTC)
    signer = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(7).not_valid_before(now - timedelta(hours=1))
              .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
    ra = x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())
    extra = [("1.2.840.113549.1.9.5", cms.Time(name="utc_time", value=signing_time))] if signing_time else []
    content = scep.envelope(csr.public_bytes(serialization.Encoding.DER), ra, cipher)
    return scep.signed_message(signer, key, message_type=scep.PKCS_REQ, transaction_id=f"tx-{identity}",
                               sender_nonce=os.urandom(16), content=content, extra=extra)


def test_des3_only_for_the_named_legacy_profiles(server: RunningServer) -> None:
    device = pkcs_req(server, "old1.example.com", token(server, "old1.example.com"), "tripledes_3key")
    status, reply = scep_post(url(server), device)
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_ALG)
    legacy = pkcs_req(server, "old2.example.com", token(server, "old2.example.com", "--profile", "gateway"),
                      "tripledes_3key")
    status, reply = scep_post(url(server), legacy)
    assert status == 200 and scep_status(reply) == (scep.PENDING, None)  # accepted, waits for approval
    modern = pkcs_req(server, "new1.example.com", token(server, "new1.example.com"), "aes256_cbc")
    status, reply = scep_post(url(server), modern)
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None)


def test_signing_time_far_off_is_bad_time(server: RunningServer) -> None:
    message = pkcs_req(server, "late.example.com", token(server, "late.example.com"), "aes256_cbc",
                       signing_time=datetime.now(UTC) - timedelta(hours=2))
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_TIME)


def test_get_cert_over_http_get_for_an_unknown_serial_is_bad_cert_id(server: RunningServer) -> None:
    key, cert = client_identity()
    ra = x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())
    sub = cms.Certificate.load(server.ca.hierarchy.sub.public_bytes(serialization.Encoding.DER))
    query = cms.IssuerAndSerialNumber({"issuer": sub.subject, "serial_number": 0xBADC0DE}).dump()
    message = scep.signed_message(cert, key, message_type=scep.GET_CERT, transaction_id="get-1",
                                  sender_nonce=os.urandom(16), content=scep.envelope(query, ra))
    encoded = urllib.parse.quote(base64.b64encode(message).decode(), safe="")
    get_url = f"{url(server)}?operation=PKIOperation&message={encoded}"
    with urllib.request.urlopen(get_url, timeout=30) as response:
        assert scep_status(response.read()) == (scep.FAILURE, scep.BAD_CERT_ID)


def test_get_crl_returns_the_crl_enveloped_to_the_requester(server: RunningServer) -> None:
    run([sys.executable, "-m", "vpnca.cli", "crl"], env=server.ca.env)
    key, cert = client_identity()
    ra = x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())
    sub = cms.Certificate.load(server.ca.hierarchy.sub.public_bytes(serialization.Encoding.DER))
    query = cms.IssuerAndSerialNumber({"issuer": sub.issuer, "serial_number": sub.serial_number}).dump()
    message = scep.signed_message(cert, key, message_type=scep.GET_CRL, transaction_id="crl-1",
                                  sender_nonce=os.urandom(16), content=scep.envelope(query, ra))
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None)
    signed = cms.ContentInfo.load(reply)["content"]
    ra_signer = x509.load_der_x509_certificate(signed["certificates"][0].chosen.dump())
    assert ra_signer == ra
    inner, cipher = scep.open_envelope(signed["encap_content_info"]["content"].native, key)
    assert cipher == "aes256_cbc"
    crls = cms.ContentInfo.load(inner)["content"]["crls"]
    crl = x509.load_der_x509_crl(crls[0].chosen.dump())
    assert crl.issuer == server.ca.hierarchy.sub.subject


# -- every refusal after the transaction is known is a CertRep FAILURE; a lost answer is delivered again --

def ra_cert(server: RunningServer) -> x509.Certificate:
    return x509.load_pem_x509_certificate((server.ca.home / "ca/scep-ra.pem").read_bytes())


def self_signed(key: rsa.RSAPrivateKey, identity: str) -> x509.Certificate:
    """The transient certificate a SCEP client signs its messages with (RFC 8894 2.3)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))


def enrollment_request(server: RunningServer, key: rsa.RSAPrivateKey, identity: str, credential: str,
                       transaction_id: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
           .add_attribute(x509.ObjectIdentifier(scep.OID_CHALLENGE_PASSWORD), credential.encode())
           .sign(key, hashes.SHA256()))
    content = scep.envelope(csr.public_bytes(serialization.Encoding.DER), ra_cert(server))
    return scep.signed_message(self_signed(key, identity), key, message_type=scep.PKCS_REQ,
                               transaction_id=transaction_id, sender_nonce=os.urandom(16), content=content)


def cert_poll(server: RunningServer, key: rsa.RSAPrivateKey, identity: str, transaction_id: str) -> bytes:
    """CertPoll (GetCertInitial): IssuerAndSubject, signed by the requested key."""
    names = server.ca.hierarchy.sub.subject.public_bytes() + \
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]).public_bytes()
    content = b"\x30" + _der_length(len(names)) + names  # SEQUENCE { issuer, subject }: asn1crypto has none
    return scep.signed_message(self_signed(key, identity), key, message_type=scep.CERT_POLL,
                               transaction_id=transaction_id, sender_nonce=os.urandom(16),
                               content=scep.envelope(content, ra_cert(server)))


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def delivered(reply: bytes, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """The certificate a SUCCESS CertRep carries, enveloped to `key`."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    signed = cms.ContentInfo.load(reply)["content"]
    inner, _ = scep.open_envelope(signed["encap_content_info"]["content"].native, key)
    (certificate,) = pkcs7.load_der_pkcs7_certificates(inner)
    return certificate


def test_a_signer_certificate_with_an_unknown_key_algorithm_is_bad_alg(server: RunningServer) -> None:
    """A corpus case that was a 500: cryptography cannot even read the signer's public key."""
    key = rsa.generate_private_key(65537, 2048)
    der = self_signed(key, "oid.example.com").public_bytes(serialization.Encoding.DER)
    rsa_encryption, unknown = bytes.fromhex("06092a864886f70d010101"), bytes.fromhex("06092a864886f70d010163")
    assert der.count(rsa_encryption) == 1
    signer = x509.load_der_x509_certificate(der.replace(rsa_encryption, unknown))  # 1.2.840.113549.1.1.99
    message = scep.signed_message(signer, key, message_type=scep.PKCS_REQ, transaction_id="oid-1",
                                  sender_nonce=os.urandom(16),
                                  content=scep.envelope(b"\x30\x00", ra_cert(server)))
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_ALG)
    assert "Traceback" not in server.log.read_text()


@pytest.mark.parametrize("content", [b"\x04\x02ab", b"\x30\x03\x02\x01\x05", b"garbage", b"\x30\x80\x00\x00"])
def test_get_cert_with_content_that_is_not_issuer_and_serial_is_bad_request(server: RunningServer,
                                                                            content: bytes) -> None:
    key, cert = client_identity()
    message = scep.signed_message(cert, key, message_type=scep.GET_CERT, transaction_id="getcert-garbage",
                                  sender_nonce=os.urandom(16),
                                  content=scep.envelope(content, ra_cert(server)))
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_REQUEST)
    assert "Traceback" not in server.log.read_text()


def test_get_cert_for_another_issuer_is_bad_cert_id(server: RunningServer) -> None:
    key, cert = client_identity()
    own = cms.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    query = cms.IssuerAndSerialNumber({"issuer": own.subject, "serial_number": 1}).dump()
    message = scep.signed_message(cert, key, message_type=scep.GET_CERT, transaction_id="getcert-other",
                                  sender_nonce=os.urandom(16), content=scep.envelope(query, ra_cert(server)))
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.FAILURE, scep.BAD_CERT_ID)


def test_a_pkcsreq_sent_again_gets_the_same_certificate(server: RunningServer) -> None:
    """The client lost the CertRep: the same token with the same key gets the certificate it was
    issued, not a second one; the same token with another key gets nothing."""
    credential = token(server, "resend.example.com")
    key = rsa.generate_private_key(65537, 2048)
    name = "resend.example.com"
    status, first = scep_post(url(server), enrollment_request(server, key, name, credential, "resend-1"))
    assert status == 200 and scep_status(first) == (scep.SUCCESS, None)
    issued = delivered(first, key)
    status, again = scep_post(url(server), enrollment_request(server, key, name, credential, "resend-2"))
    assert status == 200 and scep_status(again) == (scep.SUCCESS, None)
    assert delivered(again, key) == issued
    other = rsa.generate_private_key(65537, 2048)
    status, refused = scep_post(url(server), enrollment_request(server, other, name, credential, "resend-3"))
    assert status == 200 and scep_status(refused) == (scep.FAILURE, scep.BAD_REQUEST)
    serial = f"{issued.serial_number:x}"
    assert [c.serial for c in server.ca.store.list_certificates()
            if c.subject == issued.subject.rfc4514_string()] == [serial]  # issued once


def test_certpoll_finds_a_certificate_issued_without_approval(server: RunningServer) -> None:
    """A device profile issues at once; a client that lost that answer and polls by its transactionID
    (signed by the requested key) gets the certificate; another key or transaction gets nothing."""
    credential = token(server, "poll.example.com")
    key = rsa.generate_private_key(65537, 2048)
    transaction_id = os.urandom(20).hex()
    status, reply = scep_post(url(server), enrollment_request(server, key, "poll.example.com", credential,
                                                    transaction_id))
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None)
    issued = delivered(reply, key)
    status, polled = scep_post(url(server), cert_poll(server, key, "poll.example.com", transaction_id))
    assert status == 200 and scep_status(polled) == (scep.SUCCESS, None)
    assert delivered(polled, key) == issued
    intruder = rsa.generate_private_key(65537, 2048)
    status, refused = scep_post(url(server), cert_poll(server, intruder, "poll.example.com", transaction_id))
    assert status == 200 and scep_status(refused) == (scep.FAILURE, scep.BAD_MESSAGE_CHECK)
    unknown_poll = cert_poll(server, key, "poll.example.com", "no-such-transaction")
    status, unknown = scep_post(url(server), unknown_poll)
    assert status == 200 and scep_status(unknown) == (scep.FAILURE, scep.BAD_CERT_ID)
    assert "Traceback" not in server.log.read_text()


def openssl_verifies(server: RunningServer, reply: bytes, directory: Path) -> None:
    """`openssl smime -verify` (PKCS7_verify, what certmonger's scep-submit calls) and `openssl cms -verify`
    accept the CertRep: the RA's signature over the encapsulated content, the RA certificate chained to
    our root."""
    der, cas = directory / "certrep.der", directory / "cas.pem"
    der.write_bytes(reply)
    # PKCS7_verify builds the chain from the message's certificates and the store only: the sub-CA goes
    # beside the root (certmonger's store holds the CA and RA certificates the same way)
    cas.write_bytes(b"".join((server.ca.home / "ca" / name).read_bytes() for name in ("root.pem", "sub.pem")))
    chain = ["-CAfile", str(cas), "-purpose", "any"]
    for command in ("smime", "cms"):
        result = run([require_tool("openssl"), command, "-verify", "-inform", "DER", "-in", str(der), *chain,
                      "-out", str(directory / f"{command}.out")], check=False)
        assert result.returncode == 0 and "Verification successful" in result.stderr, result.stderr


def test_failure_and_pending_certreps_carry_content_openssl_verifies(server: RunningServer,
                                                                     tmp_path: Path) -> None:
    """RFC 8894 3.3.2: no pkcsPKIEnvelope in a FAILURE or PENDING CertRep, but the SignedData still
    encapsulates (empty) data: without it OpenSSL calls the message detached and refuses it ("no
    content"), and certmonger reported every refusal as CA_UNREACHABLE."""
    status, failure = scep_post(url(server), request(server, b"\x30\x03\x02\x01\x00"))
    assert status == 200 and scep_status(failure) == (scep.FAILURE, scep.BAD_REQUEST)
    encapsulated = cms.ContentInfo.load(failure)["content"]["encap_content_info"]
    assert encapsulated["content_type"].native == "data" and encapsulated["content"].native == b""
    openssl_verifies(server, failure, tmp_path)
    credential = token(server, "wait1.example.com", "--profile", "gateway")
    pending = pkcs_req(server, "wait1.example.com", credential, "aes256_cbc")
    status, reply = scep_post(url(server), pending)
    assert status == 200 and scep_status(reply) == (scep.PENDING, None)
    openssl_verifies(server, reply, tmp_path)


def renewal_pkcs_req(server: RunningServer, current: x509.Certificate, current_key: rsa.RSAPrivateKey,
                     new_key: rsa.RSAPrivateKey, identity: str) -> bytes:
    """What certmonger sends to renew: a PKCSReq for the new key, signed by the current certificate."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
           .sign(new_key, hashes.SHA256()))
    content = scep.envelope(csr.public_bytes(serialization.Encoding.DER), ra_cert(server))
    return scep.signed_message(current, current_key, message_type=scep.PKCS_REQ,
                               transaction_id=os.urandom(20).hex(), sender_nonce=os.urandom(16),
                               content=content)


def test_pkcsreq_signed_by_a_current_certificate_renews_and_by_a_revoked_one_is_refused(
        server: RunningServer) -> None:
    name = "renew-pkcsreq.example.com"
    key = rsa.generate_private_key(65537, 2048)
    credential = token(server, name)
    message = enrollment_request(server, key, name, credential, os.urandom(8).hex())
    status, reply = scep_post(url(server), message)
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None)
    first = delivered(reply, key)
    new_key = rsa.generate_private_key(65537, 2048)
    status, reply = scep_post(url(server), renewal_pkcs_req(server, first, key, new_key, name))
    assert status == 200 and scep_status(reply) == (scep.SUCCESS, None), scep_status(reply)
    second = delivered(reply, key)  # enveloped to the signer: the current certificate's key
    assert second.public_key() == new_key.public_key() and second.subject == first.subject
    old_serial, new_serial = f"{first.serial_number:x}", f"{second.serial_number:x}"
    record = server.ca.store.get_certificate(new_serial)
    assert record is not None and record.requester == f"cert:{old_serial}"
    renews = [json.loads(e.details) for e in server.ca.store.audit_entries()]
    assert any(d.get("serial") == new_serial and d.get("renews") == old_serial for d in renews)
    run([sys.executable, "-m", "vpnca.cli", "revoke", new_serial, "--reason", "keyCompromise"],
        env=server.ca.env)
    another = rsa.generate_private_key(65537, 2048)
    status, refused = scep_post(url(server), renewal_pkcs_req(server, second, new_key, another, name))
    assert status == 200 and scep_status(refused) == (scep.FAILURE, scep.BAD_REQUEST)
    assert "Traceback" not in server.log.read_text()
