"""JSON Web Signatures as ACME uses them: flattened JSON serialisation (RFC 7515), the JWK public
keys and algorithms ES256/ES384/RS256/EdDSA (RFC 7518, RFC 8037), thumbprints (RFC 7638), and the
HMAC-signed external account binding (RFC 8555 7.3.4)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enrollment.acme.problems import AcmeProblem, malformed

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

SIGNATURE_ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
EAB_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {"P-256": (ec.SECP256R1(), 32),
                                                    "P-384": (ec.SECP384R1(), 48)}
_EC_ALGORITHM = {"ES256": ("P-256", hashes.SHA256()), "ES384": ("P-384", hashes.SHA384())}
MIN_RSA_BITS = 2048
MAX_JSON_DEPTH = 32
# a JSON string (or an unterminated one, up to the end: so the pattern never fails, and stays linear)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.?)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")


def b64url_decode(text: Any, what: str) -> bytes:
    """Unpadded base64url (RFC 7515 section 2), strictly."""
    if not isinstance(text, str) or "=" in text:
        raise malformed(f"{what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise malformed(f"{what} is not base64url") from exc


def load_json(data: bytes | str, what: str) -> Any:
    """Parse JSON from the client: UTF-8, nested at most MAX_JSON_DEPTH deep, else malformed. Every
    JSON an ACME request carries (body, protected header, payload, inner JWS) is read here."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise malformed(f"{what} is not UTF-8") from exc
    if nested_too_deep(text):
        raise malformed(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise malformed(f"{what} is not JSON") from exc


def nested_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the arrays and objects of `text` nest deeper than `limit` (or do not pair up), found
    before parsing and without recursion: strings out, then innermost pairs peeled off `limit` times."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        brackets = _INNERMOST_PAIR.sub("", brackets)
        if not brackets:
            return False
    return True


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_algorithm(alg: Any) -> AcmeProblem:
    return AcmeProblem("badSignatureAlgorithm", f"JWS algorithm {alg!r} is not accepted",
                       algorithms=list(SIGNATURE_ALGORITHMS))


@dataclass(frozen=True)
class Jws:
    """A parsed (not yet verified) flattened JWS."""

    protected: dict[str, Any]
    payload: bytes  # empty for POST-as-GET
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.protected["alg"])

    @property
    def url(self) -> Any:
        return self.protected.get("url")

    @property
    def nonce(self) -> Any:
        return self.protected.get("nonce")

    @property
    def kid(self) -> Any:
        return self.protected.get("kid")

    @property
    def jwk(self) -> Any:
        return self.protected.get("jwk")

    def json_payload(self) -> dict[str, Any]:
        """The payload as a JSON object; POST-as-GET (an empty payload) gives {}."""
        if not self.payload:
            return {}
        value = load_json(self.payload, "JWS payload")
        if not isinstance(value, dict):
            raise malformed("JWS payload is not a JSON object")
        return value


def parse_jws(body: bytes | dict[str, Any], *, algorithms: tuple[str, ...] = SIGNATURE_ALGORITHMS) -> Jws:
    """Parse the flattened JSON serialisation; check the header fields every ACME JWS has."""
    document = body if isinstance(body, dict) else load_json(body, "request body")
    if not isinstance(document, dict) or set(document) != {"protected", "payload", "signature"}:
        raise malformed("request body must be a flattened JWS with exactly protected, payload and signature")
    protected_b64, payload_b64 = document["protected"], document["payload"]
    header_bytes = b64url_decode(protected_b64, "protected header")
    protected = load_json(header_bytes, "protected header")
    if not isinstance(protected, dict):
        raise malformed("protected header is not a JSON object")
    if protected.get("alg") not in algorithms:
        if algorithms == SIGNATURE_ALGORITHMS:
            raise bad_algorithm(protected.get("alg"))
        raise malformed(f"algorithm {protected.get('alg')!r} is not one of {', '.join(algorithms)}")
    if ("jwk" in protected) == ("kid" in protected):
        raise malformed("the protected header needs exactly one of jwk and kid")
    if not isinstance(protected.get("url"), str):
        raise malformed("the protected header has no url")
    if "crit" in protected or "b64" in protected:
        raise malformed("crit and b64 header parameters are not supported")
    return Jws(protected, b64url_decode(payload_b64, "payload"),
               f"{protected_b64}.{payload_b64}".encode(), b64url_decode(document["signature"], "signature"))


def _coordinate(jwk: dict[str, Any], name: str, size: int) -> int:
    raw = b64url_decode(jwk.get(name), f"jwk.{name}")
    if len(raw) != size:
        raise AcmeProblem("badPublicKey", f"jwk.{name} must be {size} octets")
    return int.from_bytes(raw, "big")


def public_key(jwk: Any) -> PublicKey:
    """The public key of an EC (P-256, P-384), RSA (>= 2048 bits) or OKP Ed25519 JWK."""
    if not isinstance(jwk, dict):
        raise malformed("jwk is not a JSON object")
    if "d" in jwk or "p" in jwk:
        raise malformed("jwk contains private key material")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            if jwk.get("crv") not in _CURVES:
                raise AcmeProblem("badPublicKey",
                                  f"EC curve {jwk.get('crv')!r} is not accepted (P-256, P-384)")
            curve, size = _CURVES[jwk["crv"]]
            return ec.EllipticCurvePublicNumbers(_coordinate(jwk, "x", size), _coordinate(jwk, "y", size),
                                                 curve).public_key()
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(jwk.get("n"), "jwk.n"), "big")
            e = int.from_bytes(b64url_decode(jwk.get("e"), "jwk.e"), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
            if key.key_size < MIN_RSA_BITS:
                raise AcmeProblem("badPublicKey",
                                  f"RSA keys need at least {MIN_RSA_BITS} bits, not {key.key_size}")
            return key
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk.get("x"), "jwk.x"))
    except (ValueError, TypeError, OverflowError) as exc:
        raise AcmeProblem("badPublicKey", "jwk is not a valid public key") from exc
    raise AcmeProblem("badPublicKey", f"key type {kty!r} / {jwk.get('crv')!r} is not accepted")


def required_members(jwk: dict[str, Any]) -> dict[str, str]:
    """The members RFC 7638 hashes, which are also all a public JWK needs."""
    names = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    return {name: jwk[name] for name in names[jwk["kty"]]}


def canonical_json(jwk: dict[str, Any]) -> str:
    return json.dumps(required_members(jwk), sort_keys=True, separators=(",", ":"))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint, SHA-256, base64url."""
    return b64url(hashlib.sha256(canonical_json(jwk).encode()).digest())


def verify(jws: Jws, key: PublicKey) -> None:
    """Check the signature with `key` under the header's algorithm; malformed if it does not verify."""
    alg = jws.alg
    try:
        if alg in _EC_ALGORITHM:
            curve_name, digest = _EC_ALGORITHM[alg]
            curve = _CURVES[curve_name][0]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve.name:
                raise bad_algorithm(f"{alg} with this key")
            size = _CURVES[curve_name][1]
            if len(jws.signature) != 2 * size:
                raise InvalidSignature()
            r, s = int.from_bytes(jws.signature[:size], "big"), int.from_bytes(jws.signature[size:], "big")
            key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(digest))
        elif alg == "RS256":
            if not isinstance(key, rsa.RSAPublicKey):
                raise bad_algorithm("RS256 with a non-RSA key")
            key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise bad_algorithm("EdDSA with a non-Ed25519 key")
            key.verify(jws.signature, jws.signing_input)
        else:
            raise bad_algorithm(alg)
    except InvalidSignature as exc:
        raise malformed("JWS verification error: the signature does not match the key") from exc


def verify_hmac(jws: Jws, secret: bytes) -> None:
    """An external account binding's HS256/384/512 signature."""
    digest = EAB_ALGORITHMS[jws.alg]
    expected = hmac.new(secret, jws.signing_input, digest).digest()
    if not hmac.compare_digest(expected, jws.signature):
        raise unauthorized_eab()


def unauthorized_eab() -> AcmeProblem:
    return AcmeProblem("unauthorized", "external account binding signature does not verify", 403)


__all__ = ["EAB_ALGORITHMS", "MAX_JSON_DEPTH", "SIGNATURE_ALGORITHMS", "Jws", "PublicKey", "b64url",
           "b64url_decode", "canonical_json", "load_json", "nested_too_deep", "parse_jws", "public_key",
           "thumbprint", "verify", "verify_hmac"]
