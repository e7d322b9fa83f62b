"""SCEP (RFC 8894) on the plain-HTTP listener: GetCACaps, GetCACert, PKIOperation (GET and POST).

A pkiMessage is CMS SignedData over EnvelopedData. Requests are encrypted to the RA certificate,
whose RSA key is on the token (it unwraps the content key); CertReps are signed by the RA and the
issued certificate is encrypted to the requester's signing certificate. AES only: DES and 3DES are
refused (badAlg) by the crypto policy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import crl as acrl
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from enrollment.auth import check_token, requester_for_token, requester_from_certificate
from enrollment.http import BodyTooLarge, read_limited_body
from enrollment.service import Enrollment, enroll
from hsm import HsmError
from vpnca.authority import Authority
from vpnca.errors import BadRequest, NotAuthorized, Pending, PolicyViolation
from vpnca.events import emit
from vpnca.x509util import load_csr

log = logging.getLogger("vpnca.scep")

OID_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"

CERT_REP, RENEWAL_REQ, PKCS_REQ, CERT_POLL, GET_CERT, GET_CRL = 3, 17, 19, 20, 21, 22
SUCCESS, FAILURE, PENDING = "0", "2", "3"
BAD_ALG, BAD_MESSAGE_CHECK, BAD_REQUEST, BAD_TIME, BAD_CERT_ID = "0", "1", "2", "3", "4"
CAPS = b"POSTPKIOperation\nSHA-256\nSHA-384\nSHA-512\nAES\nSCEPStandard\nRenewal\n"
DIGESTS = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
CIPHERS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32, "tripledes_3key": 24}
DES3 = "tripledes_3key"  # refused unless scep.legacy_des3_profiles names the requester's profile
MAX_MESSAGE = 64 * 1024
MAX_CLOCK_SKEW = 600  # seconds


class ScepFailure(Exception):
    """A request answered with CertRep FAILURE and this failInfo."""

    def __init__(self, fail_info: str, reason: str) -> None:
        super().__init__(reason)
        self.fail_info = fail_info


@dataclass
class PkiMessage:
    message_type: int
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate
    content: bytes | None = None
    cipher: str = "aes256_cbc"  # of the request's envelope; the reply uses the same


def _attr(value: core.Asn1Value) -> core.Any:
    return core.Any.load(value.dump())


def _attributes(signer_info: cms.SignerInfo) -> dict[str, bytes]:
    return {a["type"].dotted: a["values"][0].dump() for a in signer_info["signed_attrs"]}


def _block_cipher(name: str, key: bytes) -> tuple[Any, int]:
    if name == DES3:
        return TripleDES(key), 64
    return algorithms.AES(key), 128


def _decrypt(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    cipher, block_bits = _block_cipher(name, key)
    decryptor = Cipher(cipher, modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(block_bits).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def parse_pki_message(der: bytes, ra_key: rsa.RSAPrivateKey, *, allow_des3: bool = False) -> PkiMessage:
    """Verify the signature, read the SCEP attributes and decrypt the envelope.

    Raises ValueError when not even the outer structure can be read (no CertRep is possible), and
    ScepFailure (with the attributes read so far in its `message`) for everything else."""
    info = cms.ContentInfo.load(der, strict=True)
    if info["content_type"].native != "signed_data":
        raise ValueError("not CMS SignedData")
    signed = info["content"]
    signer_info = signed["signer_infos"][0]
    attrs = _attributes(signer_info)
    message = PkiMessage(
        message_type=int(core.PrintableString.load(attrs[OID_MESSAGE_TYPE]).native),
        transaction_id=core.PrintableString.load(attrs[OID_TRANSACTION_ID]).native,
        sender_nonce=core.OctetString.load(attrs[OID_SENDER_NONCE]).native,
        signer=_signer_certificate(signed, signer_info),
    )
    try:
        _check_signature(signer_info, message.signer, signed["encap_content_info"]["content"].native or b"")
        content = signed["encap_content_info"]["content"].native
        if content:
            message.content, message.cipher = open_envelope(content, ra_key, allow_des3=allow_des3)
    except ScepFailure as failure:
        failure.message = message  # type: ignore[attr-defined]
        raise
    return message


def _signer_certificate(signed: cms.SignedData, signer_info: cms.SignerInfo) -> x509.Certificate:
    sid = signer_info["sid"]
    for choice in signed["certificates"] or []:
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number" and \
                cert.issuer == sid.chosen["issuer"] and cert.serial_number == sid.chosen["serial_number"].native:
            return x509.load_der_x509_certificate(cert.dump())
    raise ValueError("the signer's certificate is not in the message")


def _check_signature(signer_info: cms.SignerInfo, signer: x509.Certificate, content: bytes) -> None:
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in DIGESTS:
        raise ScepFailure(BAD_ALG, f"digest {digest_name} refused")
    attrs = _attributes(signer_info)
    if "1.2.840.113549.1.9.5" in attrs:  # signingTime, when the client sends one
        signing_time = cms.Time.load(attrs["1.2.840.113549.1.9.5"]).native
        if abs((signing_time - datetime.now(UTC)).total_seconds()) > MAX_CLOCK_SKEW:
            raise ScepFailure(BAD_TIME, f"signingTime {signing_time.isoformat()} is too far from now")
    digest = hashlib.new(digest_name, content).digest()
    if core.OctetString.load(attrs.get("1.2.840.113549.1.9.4", b"\x04\x00")).native != digest:
        raise ScepFailure(BAD_MESSAGE_CHECK, "messageDigest does not match the content")
    signed_attrs = bytearray(signer_info["signed_attrs"].dump())
    signed_attrs[0] = 0x31  # signed over as a SET, sent as [0] IMPLICIT
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ScepFailure(BAD_ALG, "SCEP requests are signed with RSA keys")
    try:
        key.verify(signer_info["signature"].native, bytes(signed_attrs), padding.PKCS1v15(), DIGESTS[digest_name]())
    except InvalidSignature as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, "the pkiMessage signature does not verify") from exc


def open_envelope(content: bytes, ra_key: rsa.RSAPrivateKey, *, allow_des3: bool = False) -> tuple[bytes, str]:
    """Decrypt CMS EnvelopedData with the RA key: (content, cipher name)."""
    try:
        envelope = cms.ContentInfo.load(content)["content"]
        recipient = envelope["recipient_infos"][0].chosen
        encrypted = envelope["encrypted_content_info"]
        algorithm = encrypted["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
    except (ValueError, KeyError, TypeError) as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"unreadable envelope: {exc}") from exc
    if name not in CIPHERS or (name == DES3 and not allow_des3):
        raise ScepFailure(BAD_ALG, f"content encryption {name} refused (AES only)")
    try:
        key = ra_key.decrypt(recipient["encrypted_key"].native, padding.PKCS1v15())
        if len(key) != CIPHERS[name]:
            raise ValueError("content key of the wrong length")
        return _decrypt(name, key, algorithm["parameters"].native, encrypted["encrypted_content"].native), name
    except (ValueError, HsmError) as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"cannot decrypt the envelope: {exc}") from exc


def envelope(data: bytes, recipient: x509.Certificate, cipher: str = "aes256_cbc") -> bytes:
    """CMS EnvelopedData: AES-256-CBC content (3DES only for allowed legacy clients), the key wrapped
    with RSA to `recipient`."""
    key = os.urandom(CIPHERS[cipher])
    block, block_bits = _block_cipher(cipher, key)
    iv = os.urandom(block_bits // 8)
    padder = sym_padding.PKCS7(block_bits).padder()
    encryptor = Cipher(block, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    public = recipient.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    asn1_recipient = ax509.Certificate.load(recipient.public_bytes(serialization.Encoding.DER))
    ktri = cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber({
            "issuer": asn1_recipient.issuer, "serial_number": asn1_recipient.serial_number})),
        "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
        "encrypted_key": public.encrypt(key, padding.PKCS1v15()),
    })
    enveloped = cms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": algos.EncryptionAlgorithm({"algorithm": cipher, "parameters": iv}),
            "encrypted_content": ciphertext,
        },
    })
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def signed_message(signer_cert: x509.Certificate, signer_key: rsa.RSAPrivateKey, *, message_type: int,
                   transaction_id: str, sender_nonce: bytes, content: bytes | None,
                   extra: list[tuple[str, core.Asn1Value]] = ()) -> bytes:  # type: ignore[assignment]
    """A pkiMessage: CMS SignedData (RSA, SHA-256) with the SCEP authenticated attributes."""
    attributes = [
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [hashlib.sha256(content or b"").digest()]},
        {"type": OID_MESSAGE_TYPE, "values": [_attr(core.PrintableString(str(message_type)))]},
        {"type": OID_TRANSACTION_ID, "values": [_attr(core.PrintableString(transaction_id))]},
        {"type": OID_SENDER_NONCE, "values": [_attr(core.OctetString(sender_nonce))]},
    ] + [{"type": oid, "values": [_attr(value)]} for oid, value in extra]
    signed_attrs = cms.CMSAttributes(attributes)
    to_sign = bytearray(signed_attrs.dump())
    to_sign[0] = 0x31  # signed as a SET OF, sent as [0] IMPLICIT
    signature = signer_key.sign(bytes(to_sign), padding.PKCS1v15(), hashes.SHA256())
    asn1_signer = ax509.Certificate.load(signer_cert.public_bytes(serialization.Encoding.DER))
    encap: dict[str, object] = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": encap,
        "certificates": [asn1_signer],
        "signer_infos": [{
            "version": "v1",
            "sid": cms.SignerIdentifier(name="issuer_and_serial_number", value={
                "issuer": asn1_signer.issuer, "serial_number": asn1_signer.serial_number}),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def cert_rep(ra_cert: x509.Certificate, ra_key: rsa.RSAPrivateKey, *, transaction_id: str, recipient_nonce: bytes,
             status: str, fail_info: str | None = None, payload: bytes | None = None,
             recipient: x509.Certificate | None = None, cipher: str = "aes256_cbc") -> bytes:
    """A CertRep signed by the RA over (on SUCCESS) the payload enveloped to the requester."""
    content = envelope(payload, recipient, cipher) if payload is not None and recipient is not None else None
    extra: list[tuple[str, core.Asn1Value]] = [(OID_PKI_STATUS, core.PrintableString(status)),
                                               (OID_RECIPIENT_NONCE, core.OctetString(recipient_nonce))]
    if fail_info is not None:
        extra.append((OID_FAIL_INFO, core.PrintableString(fail_info)))
    return signed_message(ra_cert, ra_key, message_type=CERT_REP, transaction_id=transaction_id,
                          sender_nonce=os.urandom(16), content=content, extra=extra)


def degenerate_crl(crl_der: bytes) -> bytes:
    """A certificate-less SignedData carrying one CRL (the GetCRL answer)."""
    signed = cms.SignedData({"version": "v1", "digest_algorithms": [], "encap_content_info": {"content_type": "data"},
                             "crls": [cms.RevocationInfoChoice(name="crl", value=acrl.CertificateList.load(crl_der))],
                             "signer_infos": []})
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _challenge(csr: x509.CertificateSigningRequest) -> str:
    try:
        value = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier(OID_CHALLENGE_PASSWORD)).value
    except x509.AttributeNotFound as exc:
        raise ScepFailure(BAD_REQUEST, "no challengePassword in the request") from exc
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class ScepContext:
    authority: Authority
    ra_cert: x509.Certificate
    ra_key: rsa.RSAPrivateKey
    chain: list[x509.Certificate]


def handle(ctx: ScepContext, der: bytes, client: str) -> bytes | None:
    """One PKIOperation; None when the message cannot be answered with a CertRep at all."""
    try:
        message = parse_pki_message(der, ctx.ra_key,
                                    allow_des3=bool(ctx.authority.settings.scep.legacy_des3_profiles))
    except ScepFailure as failure:
        partial: PkiMessage | None = getattr(failure, "message", None)
        if partial is None:
            return None
        return _fail(ctx, partial, failure, client)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("unreadable SCEP message from %s: %s", client, exc)
        return None
    if message.message_type == GET_CRL:
        crl = ctx.authority.store.latest_crl(ctx.authority.settings.ca.name)
        if crl is None:
            return _fail(ctx, message, ScepFailure(BAD_CERT_ID, "no CRL published yet"), client)
        return cert_rep(ctx.ra_cert, ctx.ra_key, transaction_id=message.transaction_id,
                        recipient_nonce=message.sender_nonce, status=SUCCESS, payload=degenerate_crl(crl.der),
                        recipient=message.signer, cipher=message.cipher)
    try:
        certificate = _operation(ctx, message)
    except ScepFailure as failure:
        return _fail(ctx, message, failure, client)
    except Pending:
        return cert_rep(ctx.ra_cert, ctx.ra_key, transaction_id=message.transaction_id,
                        recipient_nonce=message.sender_nonce, status=PENDING)
    except (NotAuthorized, PolicyViolation, BadRequest) as exc:
        return _fail(ctx, message, ScepFailure(BAD_REQUEST, str(exc)), client)
    payload = pkcs7.serialize_certificates([certificate], serialization.Encoding.DER)
    return cert_rep(ctx.ra_cert, ctx.ra_key, transaction_id=message.transaction_id,
                    recipient_nonce=message.sender_nonce, status=SUCCESS, payload=payload, recipient=message.signer,
                    cipher=message.cipher)


def _fail(ctx: ScepContext, message: PkiMessage, failure: ScepFailure, client: str) -> bytes:
    emit("enrollment.refused", logging.WARNING, protocol="scep", client=client, fail_info=failure.fail_info,
         reason=str(failure)[:300], transaction_id=message.transaction_id)
    return cert_rep(ctx.ra_cert, ctx.ra_key, transaction_id=message.transaction_id,
                    recipient_nonce=message.sender_nonce, status=FAILURE, fail_info=failure.fail_info)


def _check_cipher(authority: Authority, message: PkiMessage, profile: str) -> None:
    if message.cipher == DES3 and profile not in authority.settings.scep.legacy_des3_profiles:
        raise ScepFailure(BAD_ALG, f"3DES is not allowed for profile {profile}")


def _operation(ctx: ScepContext, message: PkiMessage) -> x509.Certificate:
    authority = ctx.authority
    if message.message_type in (PKCS_REQ, RENEWAL_REQ):
        if message.content is None:
            raise ScepFailure(BAD_REQUEST, "no request in the envelope")
        try:
            csr = load_csr(message.content)
        except BadRequest as exc:
            raise ScepFailure(BAD_REQUEST, str(exc)) from exc
        if message.message_type == PKCS_REQ:
            if message.signer.public_key() != csr.public_key():
                raise ScepFailure(BAD_MESSAGE_CHECK, "the message is not signed by the requested key")
            token_id, _, secret = _challenge(csr).partition(":")
            requester = check_token(authority.store, token_id, secret, protocol="scep")
            profile = requester.profile or "device"
            _check_cipher(authority, message, profile)
            enrollment = Enrollment(csr=csr, profile=profile, protocol="scep", transaction_id=message.transaction_id)
        else:
            requester = requester_from_certificate(authority.store, authority.settings, authority.certificate,
                                                   message.signer, [])
            _check_cipher(authority, message, requester.profile or "device")
            enrollment = Enrollment(csr=csr, profile=requester.profile or "device", protocol="scep", renewal=True)
        return enroll(authority, requester, enrollment).certificate
    if message.message_type == CERT_POLL:
        pending = authority.store.pending_by_transaction(message.transaction_id)
        if pending is None or pending.csr_der is None:
            raise ScepFailure(BAD_CERT_ID, f"no pending request for transaction {message.transaction_id}")
        csr = load_csr(pending.csr_der)
        if message.signer.public_key() != csr.public_key():
            raise ScepFailure(BAD_MESSAGE_CHECK, "the poll is not signed by the requested key")
        if pending.status == "issued" and pending.serial:
            record = authority.store.get_certificate(pending.serial)
            if record is not None and record.der is not None:
                return x509.load_der_x509_certificate(record.der)
        token_id = pending.requester.removeprefix("token:")
        requester = requester_for_token(authority.store, token_id)
        return enroll(authority, requester, Enrollment(csr=csr, profile=pending.profile, protocol="scep",
                                                       transaction_id=message.transaction_id)).certificate
    if message.message_type == GET_CERT and message.content is not None:
        serial = cms.IssuerAndSerialNumber.load(message.content)["serial_number"].native
        record = authority.store.get_certificate(format(serial, "x"))
        if record is None or record.der is None:
            raise ScepFailure(BAD_CERT_ID, f"no certificate {serial:x}")
        return x509.load_der_x509_certificate(record.der)
    raise ScepFailure(BAD_REQUEST, f"message type {message.message_type} is not supported")


def make_router(ctx: ScepContext) -> APIRouter:
    router = APIRouter()
    ca_ra = pkcs7.serialize_certificates([ctx.ra_cert, *ctx.chain], serialization.Encoding.DER)
    caps = CAPS + (b"DES3\n" if ctx.authority.settings.scep.legacy_des3_profiles else b"")

    async def operation(der: bytes, request: Request) -> Response:
        client = request.client.host if request.client else "-"
        answer = await run_in_threadpool(handle, ctx, der, client)
        if answer is None:
            return Response("malformed pkiMessage\n", status_code=400, media_type="text/plain")
        return Response(answer, media_type="application/x-pki-message")

    @router.get("/scep")
    async def scep_get(request: Request) -> Response:
        name = request.query_params.get("operation", "")
        if name == "GetCACaps":
            return Response(caps, media_type="text/plain")
        if name == "GetCACert":
            return Response(ca_ra, media_type="application/x-x509-ca-ra-cert")
        if name == "PKIOperation":
            try:
                der = base64.b64decode(request.query_params.get("message", ""), validate=True)
            except (binascii.Error, ValueError):
                return Response("message is not base64\n", status_code=400, media_type="text/plain")
            return await operation(der, request)
        return Response(f"unknown operation {name!r}\n", status_code=400, media_type="text/plain")

    @router.post("/scep")
    async def scep_post(request: Request) -> Response:
        if request.query_params.get("operation") != "PKIOperation":
            return Response("POST is for PKIOperation\n", status_code=400, media_type="text/plain")
        try:
            body = await read_limited_body(request, MAX_MESSAGE)
        except BodyTooLarge:
            return Response("pkiMessage too large\n", status_code=413, media_type="text/plain")
        return await operation(body, request)

    return router
