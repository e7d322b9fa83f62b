"""RFC 6960 messages: parsing requests and building signed responses (asn1crypto).

cryptography's OCSP builder holds one SingleResponse per response; RFC 6960 allows several CertIDs
per request, so responses are built with asn1crypto and the tbsResponseData is signed with the OCSP
signer key on the token through its cryptography key object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import core
from asn1crypto import ocsp as aocsp
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
REASONS = {
    "unspecified": "unspecified", "keyCompromise": "key_compromise", "cACompromise": "ca_compromise",
    "affiliationChanged": "affiliation_changed", "superseded": "superseded",
    "cessationOfOperation": "cessation_of_operation", "certificateHold": "certificate_hold",
    "privilegeWithdrawn": "privilege_withdrawn", "aACompromise": "aa_compromise",
}
MAX_NONCE_OCTETS = 32  # RFC 8954
# hash algorithm of a CertID, issuerNameHash, issuerKeyHash, serialNumber: what a cached answer is for
CertIdKey = tuple[str, bytes, bytes, int]
_HASH_OIDS = {  # the content octets of the AlgorithmIdentifier's OID
    bytes.fromhex("2b0e03021a"): "sha1", bytes.fromhex("608648016503040201"): "sha256",
    bytes.fromhex("608648016503040202"): "sha384", bytes.fromhex("608648016503040203"): "sha512",
}


class MalformedRequest(Exception):
    """The bytes are not an OCSP request we can answer (malformedRequest)."""


def error_response(status: str) -> bytes:
    """An unsigned OCSPResponse: malformed_request, internal_error, try_later, unauthorized, ..."""
    der: bytes = aocsp.OCSPResponse({"response_status": status}).dump()
    return der


@dataclass(frozen=True)
class CertRequest:
    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    cert_id: aocsp.CertId


    @property
    def key(self) -> CertIdKey:
        return (self.hash_algorithm, self.issuer_name_hash, self.issuer_key_hash, self.serial)


@dataclass(frozen=True)
class ParsedRequest:
    requests: list[CertRequest]
    nonce: bytes | None  # the DER of the nonce extension's value, echoed as given


def _element(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `pos`; ValueError if it overruns."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > end:
            raise ValueError("bad length")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise ValueError("overrun")
    return tag, pos, pos + length


def plain_cert_id(der: bytes) -> CertIdKey | None:
    """The CertID of a plain request (one CertID; no extension, requestor name or signature) read
    straight from the DER, or None for anything else, which `parse_request` then reads in full.

    This is the hot path of every poller: a few slices, no ASN.1 object tree. The key is semantic, so
    the same CertID encoded differently (hash parameters NULL or absent) gives the same key.
    """
    try:
        tag, start, end = _element(der, 0, len(der))  # OCSPRequest
        if tag != 0x30 or end != len(der):
            return None
        tag, start, stop = _element(der, start, end)  # tbsRequest
        if tag != 0x30 or stop != end:  # optionalSignature follows: a signed request
            return None
        tag, start, end = _element(der, start, stop)  # requestList (no version, no requestorName)
        if tag != 0x30 or end != stop:  # requestExtensions follow (a nonce, perhaps)
            return None
        tag, start, stop = _element(der, start, end)  # the one Request
        if tag != 0x30 or stop != end:
            return None
        tag, start, end = _element(der, start, stop)  # reqCert
        if tag != 0x30 or end != stop:  # singleRequestExtensions follow
            return None
        tag, oid_start, algorithm_end = _element(der, start, end)  # hashAlgorithm
        if tag != 0x30:
            return None
        tag, oid_start, oid_end = _element(der, oid_start, algorithm_end)
        algorithm = _HASH_OIDS.get(der[oid_start:oid_end]) if tag == 0x06 else None
        if algorithm is None or der[oid_end:algorithm_end] not in (b"", b"\x05\x00"):
            return None
        tag, name_start, name_end = _element(der, algorithm_end, end)
        if tag != 0x04:
            return None
        tag, key_start, key_end = _element(der, name_end, end)
        if tag != 0x04:
            return None
        tag, serial_start, serial_end = _element(der, key_end, end)
        if tag != 0x02 or serial_end != end or serial_start == serial_end:
            return None
    except ValueError:
        return None
    return (algorithm, der[name_start:name_end], der[key_start:key_end],
            int.from_bytes(der[serial_start:serial_end], "big", signed=True))


def parse_request(der: bytes) -> ParsedRequest:
    try:
        request = aocsp.OCSPRequest.load(der, strict=True)
        tbs = request["tbs_request"]
        items = []
        for item in tbs["request_list"]:
            cert_id = item["req_cert"]
            algorithm = cert_id["hash_algorithm"]["algorithm"].native
            items.append(CertRequest(algorithm, cert_id["issuer_name_hash"].native,
                                     cert_id["issuer_key_hash"].native, cert_id["serial_number"].native,
                                     cert_id))
        nonce = None
        for extension in tbs["request_extensions"] or []:
            if extension["extn_id"].native == "nonce":
                value = extension["extn_value"].parsed
                nonce = value.dump()
                if not 1 <= len(value.native) <= MAX_NONCE_OCTETS:
                    raise MalformedRequest(f"nonce of {len(value.native)} octets (RFC 8954: 1 to 32)")
            elif extension["critical"].native:
                raise MalformedRequest(f"unsupported critical extension {extension['extn_id'].dotted}")
    except MalformedRequest:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MalformedRequest(str(exc)) from exc
    if not items:
        raise MalformedRequest("no CertID in the request")
    return ParsedRequest(items, nonce)


@dataclass(frozen=True)
class IssuerHashes:
    """issuerNameHash / issuerKeyHash of our sub-CA for each CertID hash algorithm."""

    by_algorithm: dict[str, tuple[bytes, bytes]]

    @classmethod
    def of(cls, issuer: x509.Certificate) -> IssuerHashes:
        name_der = issuer.subject.public_bytes()
        spki = ax509.PublicKeyInfo.load(issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        key_bits = spki["public_key"].contents[1:]  # BIT STRING value without the unused-bits octet
        return cls({name: (fn(name_der).digest(), fn(key_bits).digest()) for name, fn in HASHES.items()})

    def matches(self, request: CertRequest) -> bool:
        return (self.by_algorithm.get(request.hash_algorithm)
                == (request.issuer_name_hash, request.issuer_key_hash))

    def matches_key(self, key: CertIdKey) -> bool:
        return self.by_algorithm.get(key[0]) == (key[1], key[2])

    def key(self, hash_algorithm: str, serial: int) -> CertIdKey:
        """The CertID key of our certificate `serial` under `hash_algorithm`."""
        name_hash, key_hash = self.by_algorithm[hash_algorithm]
        return (hash_algorithm, name_hash, key_hash, serial)

    def cert_id(self, hash_algorithm: str, serial: int) -> aocsp.CertId:
        name_hash, key_hash = self.by_algorithm[hash_algorithm]
        return aocsp.CertId({"hash_algorithm": {"algorithm": hash_algorithm}, "issuer_name_hash": name_hash,
                             "issuer_key_hash": key_hash, "serial_number": serial})


@dataclass(frozen=True)
class Status:
    """good, revoked (with time and reason) or unknown."""

    state: str
    revoked_at: datetime | None = None
    reason: str | None = None


def single_response(cert_id: aocsp.CertId, status: Status, this_update: datetime,
                    next_update: datetime) -> aocsp.SingleResponse:
    if status.state == "revoked":
        assert status.revoked_at is not None
        info: dict[str, object] = {"revocation_time": status.revoked_at.replace(microsecond=0)}
        if status.reason and status.reason != "unspecified":  # as the CRL entry: RFC 5280 5.3.1 omits it
            info["revocation_reason"] = REASONS[status.reason]
        cert_status = aocsp.CertStatus(name="revoked", value=info)
    else:
        cert_status = aocsp.CertStatus(name=status.state, value=core.Null())
    return aocsp.SingleResponse({"cert_id": cert_id, "cert_status": cert_status, "this_update": this_update,
                                 "next_update": next_update})


@dataclass
class OcspSigner:
    """The delegated OCSP signer: its certificate and its token key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def __post_init__(self) -> None:
        self._asn1_cert = ax509.Certificate.load(self.certificate.public_bytes(serialization.Encoding.DER))
        spki = ax509.PublicKeyInfo.load(self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        self._key_hash = hashlib.sha1(spki["public_key"].contents[1:]).digest()
        algorithm = "sha256_ecdsa" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "sha256_rsa"
        self._algorithm_der = ax509.SignedDigestAlgorithm({"algorithm": algorithm}).dump()
        self._certs_der = _tlv(0xA0, _tlv(0x30, self._asn1_cert.dump()))
        key = self.key  # the signing call chosen once: pre-signing makes a million of them
        self._signature: Callable[[bytes], bytes] = (
            (lambda tbs: key.sign(tbs, _ECDSA_SHA256)) if isinstance(key, ec.EllipticCurvePrivateKey)
            else (lambda tbs: key.sign(tbs, _PKCS1V15, _SHA256)))

    def sign(self, responses: list[aocsp.SingleResponse], produced_at: datetime,
             nonce: bytes | None = None) -> bytes:
        data: dict[str, object] = {
            "responder_id": aocsp.ResponderId(name="by_key", value=self._key_hash),
            "produced_at": produced_at, "responses": responses,
        }
        if nonce is not None:
            data["response_extensions"] = [{"extn_id": "nonce", "critical": False,
                                            "extn_value": core.OctetString.load(nonce)}]
        return self.sign_response_data(aocsp.ResponseData(data).dump())

    @property
    def responder_key_hash(self) -> bytes:
        """The responderID byKey: SHA-1 of the signer's public key bits."""
        return self._key_hash

    def sign_response_data(self, tbs: bytes) -> bytes:
        """The OCSPResponse (successful, BasicOCSPResponse) around an encoded ResponseData."""
        signature = self._signature(tbs)
        # assembled by hand around the constant parts: asn1crypto re-encoding the signer certificate
        # on every response cost more than the signature itself
        basic = _tlv(0x30, b"".join((tbs, self._algorithm_der, _tlv(0x03, b"\x00" + signature),
                                     self._certs_der)))
        return _tlv(0x30, _SUCCESSFUL + _tlv(0xA0, _tlv(0x30, _ID_PKIX_OCSP_BASIC + _tlv(0x04, basic))))


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_SUCCESSFUL = bytes.fromhex("0a0100")  # ENUMERATED successful(0)
_ID_PKIX_OCSP_BASIC = bytes.fromhex("06092b0601050507300101")  # OID 1.3.6.1.5.5.7.48.1.1


def _tlv(tag: int, value: bytes) -> bytes:
    """One DER element: tag, definite length, value."""
    length = len(value)
    if length < 0x80:
        return bytes([tag, length]) + value
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + value
