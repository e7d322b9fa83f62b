"""JSON Web Signatures as ACME uses them, on joserfc: the flattened JSON serialisation (RFC 7515), JWK
public keys and the algorithms ES256/ES384/RS256/PS256/EdDSA (RFC 7518, RFC 8037), thumbprints
(RFC 7638), and the HMAC-signed external account binding (RFC 8555 7.3.4). What is ACME's own stays
here: the strict envelope, the key policy, and every failure as its RFC 8555 problem type."""

from __future__ import annotations

import base64
import binascii
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jws as joserfc_jws
from joserfc.errors import (
    BadSignatureError,
    ConflictAlgorithmError,
    InvalidKeyCurveError,
    InvalidKeyTypeError,
    JoseError,
    SecurityWarning,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import ECKey, JWKRegistry, OctKey, OKPKey, RSAKey
from joserfc.jws import FlattenedJSONSerialization
from joserfc.registry import HeaderParameter

from enrollment.acme.problems import AcmeProblem, malformed

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
JoseKey = ECKey | RSAKey | OKPKey

SIGNATURE_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
EAB_ALGORITHMS = ("HS256", "HS384", "HS512")
_CURVES = {"P-256": 32, "P-384": 48}  # accepted EC curves and their coordinate sizes
_KEY_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
MIN_RSA_BITS = 2048
MAX_JSON_DEPTH = 32
# a JSON string (or an unterminated one, up to the end: so the pattern never fails, and stays linear)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.?)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")


def _registry(algorithms: tuple[str, ...]) -> joserfc_jws.JWSRegistry:
    """joserfc's JWS registry with the ACME header parameters (RFC 8555 6.4) and room for RSA-4096 JWKs."""
    registry = joserfc_jws.JWSRegistry(algorithms=algorithms, header_registry={
        "url": HeaderParameter("ACME request URL", "str"), "nonce": HeaderParameter("ACME nonce", "str")})
    registry.max_header_length = 8192
    return registry


_SIGNATURES = _registry(SIGNATURE_ALGORITHMS)
_EAB = _registry(EAB_ALGORITHMS)


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
    document: FlattenedJSONSerialization  # as received (its members are strings), for joserfc to verify

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
    header_bytes = b64url_decode(document["protected"], "protected header")
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
    payload = b64url_decode(document["payload"], "payload")
    b64url_decode(document["signature"], "signature")
    flattened = FlattenedJSONSerialization(protected=document["protected"], payload=document["payload"],
                                           signature=document["signature"])
    return Jws(protected, payload, flattened)


def _import(jwk: dict[str, Any]) -> JoseKey:
    with warnings.catch_warnings():  # a small RSA key: public_key() refuses it with its own problem
        warnings.simplefilter("ignore", SecurityWarning)
        key = JWKRegistry.import_key(jwk)
    if not isinstance(key, ECKey | RSAKey | OKPKey):
        raise AcmeProblem("badPublicKey", f"key type {jwk.get('kty')!r} is not accepted")
    return key


def public_key(jwk: Any) -> PublicKey:
    """The public key of an EC (P-256, P-384), RSA (>= 2048 bits) or OKP Ed25519 JWK."""
    if not isinstance(jwk, dict):
        raise malformed("jwk is not a JSON object")
    if "d" in jwk or "p" in jwk:
        raise malformed("jwk contains private key material")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "EC" and crv not in _CURVES:
        raise AcmeProblem("badPublicKey", f"EC curve {crv!r} is not accepted (P-256, P-384)")
    if kty not in ("EC", "RSA") and (kty, crv) != ("OKP", "Ed25519"):
        raise AcmeProblem("badPublicKey", f"key type {kty!r} / {crv!r} is not accepted")
    if kty == "EC":
        for name in ("x", "y"):
            if len(b64url_decode(jwk.get(name), f"jwk.{name}")) != _CURVES[str(crv)]:
                raise AcmeProblem("badPublicKey", f"jwk.{name} must be {_CURVES[str(crv)]} octets")
    try:
        key = _import(required_members(jwk)).raw_value
    except (JoseError, ValueError, TypeError, OverflowError) as exc:
        raise AcmeProblem("badPublicKey", "jwk is not a valid public key") from exc
    if not isinstance(key, PublicKey):
        raise AcmeProblem("badPublicKey", "jwk is not a public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise AcmeProblem("badPublicKey", f"RSA keys need at least {MIN_RSA_BITS} bits, not {key.key_size}")
    return key


def required_members(jwk: dict[str, Any]) -> dict[str, str]:
    """The members RFC 7638 hashes, which are also all a public JWK needs."""
    names = _KEY_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if names is None or not all(isinstance(jwk.get(name), str) for name in names):
        raise malformed("jwk lacks the members of its key type")
    return {name: jwk[name] for name in names}


def canonical_json(jwk: dict[str, Any]) -> str:
    return json.dumps(required_members(jwk), sort_keys=True, separators=(",", ":"))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint, SHA-256, base64url."""
    try:
        return _import(required_members(jwk)).thumbprint()
    except (JoseError, ValueError, TypeError) as exc:
        raise AcmeProblem("badPublicKey", "jwk is not a valid public key") from exc


def _jose_key(key: PublicKey) -> JoseKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    return OKPKey.import_key(key)


def verify(jws: Jws, key: PublicKey) -> None:
    """Check the signature with `key` under the header's algorithm: badSignatureAlgorithm if the
    algorithm does not fit the key, malformed if the signature does not verify."""
    try:
        with warnings.catch_warnings():  # RFC 9864 deprecates EdDSA for Ed25519; ACME clients send EdDSA
            warnings.simplefilter("ignore", SecurityWarning)
            joserfc_jws.deserialize_json(jws.document, _jose_key(key), algorithms=[jws.alg],
                                         registry=_SIGNATURES)
    except (InvalidKeyTypeError, InvalidKeyCurveError, UnsupportedAlgorithmError,
            ConflictAlgorithmError) as exc:
        raise bad_algorithm(f"{jws.alg} with this key") from exc
    except BadSignatureError as exc:
        raise malformed("JWS verification error: the signature does not match the key") from exc
    except JoseError as exc:
        raise malformed(f"JWS not accepted: {exc.error}") from exc


def verify_hmac(jws: Jws, secret: bytes) -> None:
    """An external account binding's HS256/384/512 signature."""
    try:
        joserfc_jws.deserialize_json(jws.document, OctKey.import_key(secret), algorithms=[jws.alg],
                                     registry=_EAB)
    except BadSignatureError as exc:
        raise unauthorized_eab() from exc
    except JoseError as exc:
        raise malformed(f"external account binding not accepted: {exc.error}") from exc


def unauthorized_eab() -> AcmeProblem:
    return AcmeProblem("unauthorized", "external account binding signature does not verify", 403)


__all__ = ["EAB_ALGORITHMS", "MAX_JSON_DEPTH", "SIGNATURE_ALGORITHMS", "Jws", "PublicKey", "b64url",
           "b64url_decode", "canonical_json", "load_json", "nested_too_deep", "parse_jws", "public_key",
           "thumbprint", "verify", "verify_hmac"]
