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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import crl as acrl
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from enrollment.http import BodyTooLarge, read_limited_body
from vpnca import metrics
from vpnca.enroll import Enrollment
from vpnca.errors import (
    BadRequest,
    Conflict,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    Pending,
    PolicyViolation,
    SigningUnavailable,
    Unavailable,
    VpncaError,
    new_error_id,
)
from vpnca.events import emit
from vpnca.outage import OUTAGES
from vpnca.ports import ScepAuthority
from vpnca.refusals import record_refusal
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
DIGESTS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
CIPHERS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32, "tripledes_3key": 24}
DES3 = "tripledes_3key"  # refused unless scep.legacy_des3_profiles names the requester's profile
MAX_MESSAGE = 64 * 1024
MAX_CLOCK_SKEW = 600  # seconds
MAX_TRANSACTION_ID = 128  # characters, as pending_requests.transaction_id holds them
RETRY_AFTER_SECONDS = 30  # when the RA key on the token cannot sign even a failure


class ScepFailure(Exception):
    """A request answered with CertRep FAILURE and this failInfo (the reason goes to the log only)."""

    def __init__(self, fail_info: str, reason: str) -> None:
        super().__init__(reason)
        self.fail_info = fail_info


class UnreadableMessage(ValueError):
    """Not even the attributes a CertRep needs can be read: the answer is HTTP 400."""


@dataclass(frozen=True)
class Transaction:
    """What every CertRep needs, read first so that any later failure is answered with one."""

    message_type: int  # 0 when unreadable: answered badRequest
    transaction_id: str
    sender_nonce: bytes


@dataclass
class PkiMessage:
    transaction: Transaction
    signer: x509.Certificate
    content: bytes | None = None
    cipher: str = "aes256_cbc"  # of the request's envelope; the reply uses the same

    @property
    def message_type(self) -> int:
        return self.transaction.message_type

    @property
    def transaction_id(self) -> str:
        return self.transaction.transaction_id

    @property
    def sender_nonce(self) -> bytes:
        return self.transaction.sender_nonce


# what asn1crypto and cryptography raise on bytes that are not the structure asked for
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)


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


def read_transaction(der: bytes) -> tuple[Transaction, cms.SignedData, cms.SignerInfo]:
    """The outer SignedData and the SCEP attributes a CertRep echoes; UnreadableMessage if not there."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise UnreadableMessage("not CMS SignedData")
        signed = info["content"]
        signer_info = signed["signer_infos"][0]
        attrs = _attributes(signer_info)
        transaction_id = core.PrintableString.load(attrs[OID_TRANSACTION_ID]).native
        sender_nonce = core.OctetString.load(attrs[OID_SENDER_NONCE]).native
    except _PARSE_ERRORS as exc:
        raise UnreadableMessage(f"{type(exc).__name__}: {exc}"[:200]) from exc
    if not isinstance(transaction_id, str) or not transaction_id or not isinstance(sender_nonce, bytes):
        raise UnreadableMessage("no transactionID or senderNonce")
    try:
        message_type = int(core.PrintableString.load(attrs[OID_MESSAGE_TYPE]).native)
    except _PARSE_ERRORS:
        message_type = 0
    return Transaction(message_type, transaction_id, sender_nonce), signed, signer_info


def open_pki_message(transaction: Transaction, signed: cms.SignedData, signer_info: cms.SignerInfo,
                     ra_key: rsa.RSAPrivateKey, *, allow_des3: bool = False) -> PkiMessage:
    """Verify the signature and decrypt the envelope; ScepFailure (or a core/token error) if not."""
    if len(transaction.transaction_id) > MAX_TRANSACTION_ID:
        raise ScepFailure(BAD_REQUEST, f"transactionID longer than {MAX_TRANSACTION_ID} characters")
    try:
        signer = _signer_certificate(signed, signer_info)
        encapsulated = signed["encap_content_info"]["content"].native
    except _PARSE_ERRORS as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"unreadable signer or content: {type(exc).__name__}") from exc
    if encapsulated is not None and not isinstance(encapsulated, bytes):
        raise ScepFailure(BAD_MESSAGE_CHECK, "the encapsulated content is not an OCTET STRING")
    message = PkiMessage(transaction, signer)
    _check_signature(signer_info, signer, encapsulated or b"")
    if encapsulated:
        message.content, message.cipher = open_envelope(encapsulated, ra_key, allow_des3=allow_des3)
    return message


def _signer_certificate(signed: cms.SignedData, signer_info: cms.SignerInfo) -> x509.Certificate:
    sid = signer_info["sid"]
    if sid.name != "issuer_and_serial_number":
        raise ScepFailure(BAD_MESSAGE_CHECK, "the signer is not identified by issuer and serial number")
    for choice in signed["certificates"] or []:
        cert = choice.chosen
        if cert.issuer == sid.chosen["issuer"] and cert.serial_number == sid.chosen["serial_number"].native:
            return x509.load_der_x509_certificate(cert.dump())
    raise ScepFailure(BAD_MESSAGE_CHECK, "the signer's certificate is not in the message")


def _public_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """The RSA key of a requester's (self-signed or vpnca) certificate: badAlg for any other key."""
    try:
        key = cert.public_key()
    except ValueError as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"the signer's public key cannot be read: {exc}") from exc
    # UnsupportedAlgorithm (an unknown key OID) goes to the error map: badAlg
    if not isinstance(key, rsa.RSAPublicKey):
        raise ScepFailure(BAD_ALG, "SCEP requests are signed with RSA keys")
    return key


def _check_signature(signer_info: cms.SignerInfo, signer: x509.Certificate, content: bytes) -> None:
    try:
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        attrs = _attributes(signer_info)
        signing_time = cms.Time.load(attrs["1.2.840.113549.1.9.5"]).native \
            if "1.2.840.113549.1.9.5" in attrs else None  # signingTime, when the client sends one
        message_digest = core.OctetString.load(attrs.get("1.2.840.113549.1.9.4", b"\x04\x00")).native
        signed_attrs = bytearray(signer_info["signed_attrs"].dump())
        signature = signer_info["signature"].native
    except _PARSE_ERRORS as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"unreadable signerInfo: {type(exc).__name__}") from exc
    if digest_name not in DIGESTS:
        raise ScepFailure(BAD_ALG, f"digest {digest_name} refused")
    if signing_time is not None:
        if not isinstance(signing_time, datetime):
            raise ScepFailure(BAD_TIME, "signingTime is not a time")
        if signing_time.tzinfo is None:
            signing_time = signing_time.replace(tzinfo=UTC)
        if abs((signing_time - datetime.now(UTC)).total_seconds()) > MAX_CLOCK_SKEW:
            raise ScepFailure(BAD_TIME, f"signingTime {signing_time.isoformat()} is too far from now")
    if message_digest != hashlib.new(digest_name, content).digest():
        raise ScepFailure(BAD_MESSAGE_CHECK, "messageDigest does not match the content")
    signed_attrs[0] = 0x31  # signed over as a SET, sent as [0] IMPLICIT
    key = _public_key(signer)
    try:
        key.verify(signature, bytes(signed_attrs), padding.PKCS1v15(), DIGESTS[digest_name]())
    except (InvalidSignature, TypeError, ValueError) as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, "the pkiMessage signature does not verify") from exc


def open_envelope(content: bytes, ra_key: rsa.RSAPrivateKey, *,
                  allow_des3: bool = False) -> tuple[bytes, str]:
    """Decrypt CMS EnvelopedData with the RA key: (content, cipher name)."""
    try:
        envelope = cms.ContentInfo.load(content)["content"]
        recipient = envelope["recipient_infos"][0].chosen
        encrypted = envelope["encrypted_content_info"]
        algorithm = encrypted["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
    except _PARSE_ERRORS as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"unreadable envelope: {exc}") from exc
    if name not in CIPHERS or (name == DES3 and not allow_des3):
        raise ScepFailure(BAD_ALG, f"content encryption {name} refused (AES only)")
    try:
        encrypted_key, iv = recipient["encrypted_key"].native, algorithm["parameters"].native
        ciphertext = encrypted["encrypted_content"].native
    except _PARSE_ERRORS as exc:
        raise ScepFailure(BAD_MESSAGE_CHECK, f"unreadable envelope: {exc}") from exc
    modulus = ra_key.public_key().public_numbers().n
    if not isinstance(encrypted_key, bytes) or len(encrypted_key) != (modulus.bit_length() + 7) // 8 \
            or int.from_bytes(encrypted_key, "big") >= modulus:  # refused here, not by the token
        raise ScepFailure(BAD_MESSAGE_CHECK, "the wrapped content key does not fit the RA key")
    try:
        key = ra_key.decrypt(encrypted_key, padding.PKCS1v15())
    except SigningUnavailable as exc:
        # SoftHSM answers a bad PKCS#1 block with CKR_GENERAL_ERROR, as it would a failing token: call
        # it the client's fault. If the token is really away, the CertRep cannot be signed either and
        # the answer is 503 (handle), so an outage is not reported to the client as its fault.
        raise ScepFailure(BAD_MESSAGE_CHECK, "the RA cannot unwrap the content key") from exc
    try:
        if len(key) != CIPHERS[name]:
            raise ValueError("content key of the wrong length")
        return _decrypt(name, key, iv, ciphertext), name
    except (ValueError, TypeError) as exc:
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
            "content_encryption_algorithm": algos.EncryptionAlgorithm({"algorithm": cipher,
                                                                       "parameters": iv}),
            "encrypted_content": ciphertext,
        },
    })
    der: bytes = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()
    return der


def signed_message(signer_cert: x509.Certificate, signer_key: rsa.RSAPrivateKey, *, message_type: int,
                   transaction_id: str, sender_nonce: bytes, content: bytes | None,
                   extra: Sequence[tuple[str, core.Asn1Value]] = ()) -> bytes:
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
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    return der


def cert_rep(ra_cert: x509.Certificate, ra_key: rsa.RSAPrivateKey, *, transaction_id: str,
             recipient_nonce: bytes, status: str, fail_info: str | None = None, payload: bytes | None = None,
             recipient: x509.Certificate | None = None, cipher: str = "aes256_cbc") -> bytes:
    """A CertRep signed by the RA over (on SUCCESS) the payload enveloped to the requester.

    FAILURE and PENDING carry no pkcsPKIEnvelope (RFC 8894 3.3.2), but the SignedData still
    encapsulates its (empty) data: a SignedData without eContent is "detached", and OpenSSL's
    PKCS7_verify, which certmonger's scep-submit and `openssl smime -verify` use, refuses it
    ("no content"), so the client could read neither pkiStatus nor failInfo. An empty OCTET STRING,
    as libscep sends, verifies everywhere (strongSwan's pki too)."""
    content = envelope(payload, recipient, cipher) if payload is not None and recipient is not None else b""
    extra: list[tuple[str, core.Asn1Value]] = [(OID_PKI_STATUS, core.PrintableString(status)),
                                               (OID_RECIPIENT_NONCE, core.OctetString(recipient_nonce))]
    if fail_info is not None:
        extra.append((OID_FAIL_INFO, core.PrintableString(fail_info)))
    return signed_message(ra_cert, ra_key, message_type=CERT_REP, transaction_id=transaction_id,
                          sender_nonce=os.urandom(16), content=content, extra=extra)


def degenerate_crl(crl_der: bytes) -> bytes:
    """A certificate-less SignedData carrying one CRL (the GetCRL answer)."""
    crl = cms.RevocationInfoChoice(name="crl", value=acrl.CertificateList.load(crl_der))
    signed = cms.SignedData({"version": "v1", "digest_algorithms": [], "crls": [crl], "signer_infos": [],
                             "encap_content_info": {"content_type": "data"}})
    der: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    return der


def _challenge(csr: x509.CertificateSigningRequest) -> str:
    try:
        value = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier(OID_CHALLENGE_PASSWORD)).value
    except x509.AttributeNotFound as exc:
        raise ScepFailure(BAD_REQUEST, "no challengePassword in the request") from exc
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class ScepContext:
    door: ScepAuthority
    ra_cert: x509.Certificate
    ra_key: rsa.RSAPrivateKey  # on the token, its errors SigningUnavailable (ports.GuardedRsaKey)
    legacy_des3_profiles: frozenset[str] = frozenset()  # scep.legacy_des3_profiles


@dataclass(frozen=True)
class ScepReply:
    """What a PKIOperation answers over HTTP: a CertRep, or (when none can be made) a short text."""

    status: int
    body: bytes
    media_type: str = "application/x-pki-message"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> ScepReply:
        return cls(status, f"{text}\n".encode(), "text/plain", dict(headers))


# The one error map of SCEP: exception -> (failInfo, refusal reason). The first match wins, so
# subclasses come before their bases. ScepFailure carries its own failInfo; anything not here is
# unexpected: logged with its traceback and answered badRequest. RFC 8894 has no failInfo for "try
# later", so the CA's own troubles (token, database) are badRequest too; never an HTTP 500.
FAIL_INFO: tuple[tuple[type[BaseException], str, str], ...] = (
    (UnsupportedAlgorithm, BAD_ALG, "algorithm"),
    (InvalidSignature, BAD_MESSAGE_CHECK, "signature"),
    (NotAuthenticated, BAD_REQUEST, "authentication"),
    (NotAuthorized, BAD_REQUEST, "not_authorized"),
    (PolicyViolation, BAD_REQUEST, "policy"),
    (BadRequest, BAD_REQUEST, "bad_request"),
    (NotFound, BAD_CERT_ID, "not_found"),
    (Conflict, BAD_REQUEST, "conflict"),
    (Unavailable, BAD_REQUEST, "unavailable"),
    (VpncaError, BAD_REQUEST, "error"),
)
_FAIL_INFO_KIND = {BAD_ALG: "bad_alg", BAD_MESSAGE_CHECK: "bad_message_check", BAD_REQUEST: "bad_request",
                   BAD_TIME: "bad_time", BAD_CERT_ID: "bad_cert_id"}


def fail_info_for(exc: BaseException) -> tuple[str, str] | None:
    """(failInfo, refusal kind) for an exception; None when it is unexpected."""
    if isinstance(exc, ScepFailure):
        return exc.fail_info, _FAIL_INFO_KIND.get(exc.fail_info, "bad_request")
    return next(((info, kind) for kind_type, info, kind in FAIL_INFO if isinstance(exc, kind_type)), None)


def handle(ctx: ScepContext, der: bytes, client: str) -> ScepReply:
    """One PKIOperation: a CertRep whenever the message names its transaction, else HTTP 400; HTTP 503
    when the RA key cannot sign even a failure."""
    try:
        transaction, signed, signer_info = read_transaction(der)
    except UnreadableMessage as exc:
        emit("enrollment.refused", logging.WARNING, protocol="scep", client=client, reason="unreadable",
             detail=str(exc))
        metrics.refused("scep", "malformed")
        return ScepReply.text(400, "malformed pkiMessage")
    try:
        try:
            answer = _answer(ctx, transaction, signed, signer_info, client)
        except Exception as exc:  # noqa: BLE001 - every refusal is a CertRep FAILURE, mapped once
            answer = _cert_rep(ctx, transaction, FAILURE, fail_info=_refusal(exc, transaction, client))
    except Exception as exc:  # noqa: BLE001 - no CertRep can be signed: the RA key is away (or a bug)
        error_id = record_refusal(exc, protocol="scep", event="enrollment.refused", client=client,
                                  transaction_id=transaction.transaction_id)
        return ScepReply.text(503, f"the SCEP RA cannot sign now; try again later (id {error_id})",
                              **{"Retry-After": str(RETRY_AFTER_SECONDS), "X-Request-ID": error_id})
    OUTAGES.up("token")
    return ScepReply(200, answer)


def _refusal(exc: Exception, transaction: Transaction, client: str) -> str:
    """The failInfo for `exc`, the refusal logged and counted once (unless the core did already)."""
    mapped = fail_info_for(exc)
    fail_info, kind = mapped if mapped is not None else (BAD_REQUEST, "error")
    if isinstance(exc, VpncaError) or mapped is None:  # the core's taxonomy, or a bug (with traceback)
        record_refusal(exc, protocol="scep", event="enrollment.refused", client=client, fail_info=fail_info,
                       message_type=transaction.message_type, transaction_id=transaction.transaction_id)
    else:  # the protocol's own refusals
        emit("enrollment.refused", logging.WARNING, protocol="scep", client=client, fail_info=fail_info,
             reason=kind, detail=str(exc)[:300], message_type=transaction.message_type,
             transaction_id=transaction.transaction_id, error_id=new_error_id())
        metrics.refused("scep", kind)
    return fail_info


def _cert_rep(ctx: ScepContext, transaction: Transaction, status: str, *, fail_info: str | None = None,
              payload: bytes | None = None, message: PkiMessage | None = None) -> bytes:
    return cert_rep(ctx.ra_cert, ctx.ra_key, transaction_id=transaction.transaction_id,
                    recipient_nonce=transaction.sender_nonce, status=status, fail_info=fail_info,
                    payload=payload,
                    recipient=message.signer if message else None,
                    cipher=message.cipher if message else "aes256_cbc")


def _answer(ctx: ScepContext, transaction: Transaction, signed: cms.SignedData, signer_info: cms.SignerInfo,
            client: str) -> bytes:
    """The CertRep for a message that names its transaction: SUCCESS or PENDING; raises on refusal."""
    message = open_pki_message(transaction, signed, signer_info, ctx.ra_key,
                               allow_des3=bool(ctx.legacy_des3_profiles))
    try:
        payload = _operation(ctx, message, client)
    except Pending:
        return _cert_rep(ctx, transaction, PENDING)
    return _cert_rep(ctx, transaction, SUCCESS, payload=payload, message=message)


def _check_cipher(ctx: ScepContext, message: PkiMessage, profile: str) -> None:
    if message.cipher == DES3 and profile not in ctx.legacy_des3_profiles:
        raise ScepFailure(BAD_ALG, f"3DES is not allowed for profile {profile}")


def _certificates(certificate: x509.Certificate) -> bytes:
    return pkcs7.serialize_certificates([certificate], serialization.Encoding.DER)


def _operation(ctx: ScepContext, message: PkiMessage, client: str) -> bytes:
    """The payload of a SUCCESS CertRep (a degenerate PKCS#7 with the certificate or the CRL)."""
    if message.message_type in (PKCS_REQ, RENEWAL_REQ):
        return _certificates(_enroll(ctx, message, client))
    if message.message_type == CERT_POLL:
        return _certificates(_poll(ctx, message, client))
    if message.message_type == GET_CERT and message.content is not None:
        return _certificates(_get_cert(ctx, message.content))
    if message.message_type == GET_CRL:
        crl = ctx.door.latest_crl()
        if crl is None:
            raise ScepFailure(BAD_CERT_ID, "no CRL published yet")
        return degenerate_crl(crl)
    raise ScepFailure(BAD_REQUEST, f"message type {message.message_type} is not supported")


def _signed_by_our_certificate(issuer: x509.Certificate, signer: x509.Certificate) -> bool:
    """Whether the pkiMessage's signer is a certificate this sub-CA issued (a renewal's signer), not a
    self-signed one made for the request. Its validity and status are checked by
    requester_from_certificate, so that a revoked or expired one is refused, not taken for a token."""
    if signer.issuer != issuer.subject:
        return False
    try:
        signer.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _enroll(ctx: ScepContext, message: PkiMessage, client: str) -> x509.Certificate:
    """PKCSReq (a challenge password) or RenewalReq (signed by the current certificate). A PKCSReq signed
    by a vpnca certificate is a renewal too: certmonger (and other Linux clients) renew that way,
    never with RenewalReq. A PKCSReq sent again with the same token and key gets the certificate its
    first sending was issued (enroll())."""
    door = ctx.door
    if message.content is None:
        raise ScepFailure(BAD_REQUEST, "no request in the envelope")
    csr = load_csr(message.content)
    if message.message_type == RENEWAL_REQ or _signed_by_our_certificate(door.issuer, message.signer):
        requester = door.certificate_requester(message.signer, [])
        _check_cipher(ctx, message, requester.profile or "device")
        renewal = Enrollment(csr=csr, profile=requester.profile or "device", protocol="scep", renewal=True,
                             client=client)
        return door.enroll(requester, renewal).certificate
    if _public_key(message.signer) != csr.public_key():
        raise ScepFailure(BAD_MESSAGE_CHECK, "the message is not signed by the requested key")
    token_id, _, secret = _challenge(csr).partition(":")
    requester = door.token_requester(token_id, secret, protocol="scep")
    profile = requester.profile or "device"
    _check_cipher(ctx, message, profile)
    issued = door.enroll(requester, Enrollment(csr=csr, profile=profile, protocol="scep", client=client,
                                               transaction_id=message.transaction_id))
    door.record_transaction(message.transaction_id, requester.name, profile, csr, issued)
    return issued.certificate


def _poll(ctx: ScepContext, message: PkiMessage, client: str) -> x509.Certificate:
    """CertPoll (GetCertInitial) by transactionID, signed by the requested key: the certificate once an
    operator approved the request (issued now if need be), or the one already issued for it."""
    door = ctx.door
    pending = door.pending_by_transaction(message.transaction_id)
    if pending is None or pending.csr_der is None:
        raise ScepFailure(BAD_CERT_ID, f"no request for transaction {message.transaction_id}")
    csr = load_csr(pending.csr_der)
    if _public_key(message.signer) != csr.public_key():
        raise ScepFailure(BAD_MESSAGE_CHECK, "the poll is not signed by the requested key")
    if pending.status == "issued":
        certificate = door.certificate(pending.serial) if pending.serial else None
        if certificate is None:
            raise ScepFailure(BAD_CERT_ID, f"the certificate of transaction {message.transaction_id} is gone")
        return certificate
    requester = door.polling_requester(pending.requester.removeprefix("token:"))
    enrollment = Enrollment(csr=csr, profile=pending.profile, protocol="scep", client=client,
                            transaction_id=message.transaction_id)
    return door.enroll(requester, enrollment).certificate


def _get_cert(ctx: ScepContext, content: bytes) -> x509.Certificate:
    """GetCert: the certificate named by an IssuerAndSerialNumber of this CA."""
    try:
        query = cms.IssuerAndSerialNumber.load(content, strict=True)
        issuer, serial = query["issuer"], query["serial_number"].native
        ours = ax509.Name.load(ctx.door.issuer.subject.public_bytes()) == issuer
    except _PARSE_ERRORS as exc:
        raise ScepFailure(BAD_REQUEST, "GetCert content is not an IssuerAndSerialNumber") from exc
    if not ours or not isinstance(serial, int) or serial <= 0:
        raise ScepFailure(BAD_CERT_ID, f"no certificate {serial} from this CA")
    certificate = ctx.door.certificate(format(serial, "x"))
    if certificate is None:
        raise ScepFailure(BAD_CERT_ID, f"no certificate {serial:x}")
    return certificate


def make_router(ctx: ScepContext) -> APIRouter:
    router = APIRouter()
    ca_ra = pkcs7.serialize_certificates([ctx.ra_cert, *ctx.door.chain()], serialization.Encoding.DER)
    caps = CAPS + (b"DES3\n" if ctx.legacy_des3_profiles else b"")

    async def operation(der: bytes, request: Request) -> Response:
        client = request.client.host if request.client else "-"
        reply = await run_in_threadpool(handle, ctx, der, client)
        return Response(reply.body, status_code=reply.status, media_type=reply.media_type,
                        headers=reply.headers)

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
