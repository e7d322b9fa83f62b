"""JWS/JWK handling of the ACME server, against RFC vectors and hand-broken input."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from enrollment.acme import jose
from enrollment.acme.problems import AcmeProblem
from enrollment.acme.service import parse_identifiers
from enrollment.acme.validation import Identifier, resolver_address
from vpnca.errors import ConfigError

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint
RFC7638_JWK = {
    "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWK"
        "RXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMic"
        "AtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3"
        "XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
}


def jws_for(key: ec.EllipticCurvePrivateKey, protected: dict[str, object],
            payload: bytes = b"{}") -> dict[str, str]:
    protected_b64 = jose.b64url(json.dumps(protected).encode())
    payload_b64 = jose.b64url(payload)
    signature = key.sign(f"{protected_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(signature)
    return {"protected": protected_b64, "payload": payload_b64,
            "signature": jose.b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


def ec_jwk(key: ec.EllipticCurvePrivateKey, size: int = 32) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256" if size == 32 else "P-384",
            "x": jose.b64url(numbers.x.to_bytes(size, "big")),
            "y": jose.b64url(numbers.y.to_bytes(size, "big"))}


def problem_type(call: object) -> str:
    with pytest.raises(AcmeProblem) as raised:
        call()  # type: ignore[operator]
    return raised.value.type


def test_thumbprint_matches_rfc_7638() -> None:
    assert jose.thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_good_es256_jws_verifies_and_a_tampered_one_does_not() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    document = jws_for(key, {"alg": "ES256", "jwk": ec_jwk(key), "nonce": "n", "url": "https://ca/acme/x"},
                       b'{"a":1}')
    parsed = jose.parse_jws(json.dumps(document).encode())
    jose.verify(parsed, jose.public_key(parsed.jwk))
    assert parsed.json_payload() == {"a": 1}
    tampered = {**document, "payload": jose.b64url(b'{"a":2}')}
    parsed = jose.parse_jws(json.dumps(tampered).encode())
    assert problem_type(lambda: jose.verify(parsed, jose.public_key(parsed.jwk))) == "malformed"
    other = ec.generate_private_key(ec.SECP384R1())
    assert problem_type(lambda: jose.verify(parsed, other.public_key())) == "badSignatureAlgorithm"


def _signed(sign: Callable[[bytes], bytes], protected: Mapping[str, object], payload: bytes = b"{}") -> bytes:
    protected_b64, payload_b64 = jose.b64url(json.dumps(protected).encode()), jose.b64url(payload)
    signature = sign(f"{protected_b64}.{payload_b64}".encode())
    return json.dumps({"protected": protected_b64, "payload": payload_b64,
                       "signature": jose.b64url(signature)}).encode()


def _rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "e": jose.b64url(numbers.e.to_bytes(3, "big")),
            "n": jose.b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))}


def _signers() -> dict[str, tuple[Callable[[bytes], bytes], dict[str, str]]]:
    """Each accepted algorithm: a signing function (cryptography, not the library under test), its JWK."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    p384 = ec.generate_private_key(ec.SECP384R1())

    def es384(data: bytes) -> bytes:
        r, s = decode_dss_signature(p384.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    ed_jwk = {"kty": "OKP", "crv": "Ed25519", "x": jose.b64url(ed_key.public_key().public_bytes_raw())}
    return {
        "ES384": (es384, ec_jwk(p384, 48)),
        "RS256": (lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()), _rsa_jwk(rsa_key)),
        "PS256": (lambda data: rsa_key.sign(data, pss, hashes.SHA256()), _rsa_jwk(rsa_key)),
        "EdDSA": (ed_key.sign, ed_jwk),
    }


@pytest.mark.parametrize("alg", ["ES384", "RS256", "PS256", "EdDSA"])
def test_every_accepted_algorithm_verifies_and_refuses_a_changed_payload(alg: str) -> None:
    sign, jwk = _signers()[alg]
    protected = {"alg": alg, "jwk": jwk, "nonce": "n", "url": "https://ca/acme/x"}
    parsed = jose.parse_jws(_signed(sign, protected, b'{"a":1}'))
    jose.verify(parsed, jose.public_key(parsed.jwk))
    forged = json.loads(_signed(sign, protected, b'{"a":1}'))
    forged["payload"] = jose.b64url(b'{"a":2}')
    parsed = jose.parse_jws(json.dumps(forged).encode())
    assert problem_type(lambda: jose.verify(parsed, jose.public_key(parsed.jwk))) == "malformed"


def test_an_algorithm_that_does_not_fit_the_key_is_bad_signature_algorithm() -> None:
    sign, jwk = _signers()["RS256"]
    parsed = jose.parse_jws(_signed(sign, {"alg": "ES256", "jwk": jwk, "url": "https://ca/acme/x"}))
    with pytest.raises(AcmeProblem) as raised:
        jose.verify(parsed, jose.public_key(parsed.jwk))
    assert raised.value.type == "badSignatureAlgorithm"
    assert raised.value.extra["algorithms"] == list(jose.SIGNATURE_ALGORITHMS)


def test_thumbprints_ignore_members_outside_rfc_7638() -> None:
    for _, jwk in _signers().values():
        assert jose.thumbprint({**jwk, "kid": "k", "use": "sig"}) == jose.thumbprint(jwk)
    assert problem_type(lambda: jose.thumbprint({"kty": "EC", "crv": "P-256"})) == "malformed"


def test_external_account_binding_hmac_verifies_only_with_its_key() -> None:
    secret = b"k" * 32
    protected = {"alg": "HS256", "kid": "eab1", "url": "https://ca/acme/new-account"}
    body = _signed(lambda data: hmac.new(secret, data, hashlib.sha256).digest(), protected)
    parsed = jose.parse_jws(body, algorithms=jose.EAB_ALGORITHMS)
    jose.verify_hmac(parsed, secret)
    assert problem_type(lambda: jose.verify_hmac(parsed, b"x" * 32)) == "unauthorized"


@pytest.mark.parametrize(("body", "expected"), [
    (b"\x00\xff", "malformed"),
    (b"[]", "malformed"),
    (json.dumps({"protected": "e30", "payload": "", "signature": "", "header": {}}).encode(), "malformed"),
    (json.dumps({"protected": "e30=", "payload": "", "signature": ""}).encode(), "malformed"),  # padded
    (json.dumps({"protected": jose.b64url(b'{"alg":"none","kid":"k","url":"u"}'), "payload": "",
                 "signature": ""}).encode(), "badSignatureAlgorithm"),
    (json.dumps({"protected": jose.b64url(b'{"alg":"ES256","kid":"k","jwk":{},"url":"u"}'), "payload": "",
                 "signature": ""}).encode(), "malformed"),
    (json.dumps({"protected": jose.b64url(b'{"alg":"ES256","kid":"k"}'), "payload": "",
                 "signature": ""}).encode(), "malformed"),
])
def test_malformed_jws_is_refused_with_its_problem_type(body: bytes, expected: str) -> None:
    assert problem_type(lambda: jose.parse_jws(body)) == expected


def test_weak_unknown_and_private_keys_are_refused() -> None:
    small = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    weak = {"kty": "RSA", "n": jose.b64url(small.n.to_bytes(128, "big")), "e": "AQAB"}
    assert problem_type(lambda: jose.public_key(weak)) == "badPublicKey"
    p521 = {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}
    assert problem_type(lambda: jose.public_key(p521)) == "badPublicKey"
    key = ec.generate_private_key(ec.SECP256R1())
    off_curve = {**ec_jwk(key), "y": jose.b64url((5).to_bytes(32, "big"))}
    assert problem_type(lambda: jose.public_key(off_curve)) == "badPublicKey"
    assert problem_type(lambda: jose.public_key({**ec_jwk(key), "d": "AA"})) == "malformed"
    assert problem_type(lambda: jose.public_key({"kty": "oct", "k": "AA"})) == "badPublicKey"


def test_identifiers_are_canonical_and_typed() -> None:
    parsed = parse_identifiers([{"type": "dns", "value": "VPN.Example.COM."},
                                {"type": "dns", "value": "vpn.example.com"},
                                {"type": "ip", "value": "2001:DB8::1"}])
    assert parsed == [Identifier("dns", "vpn.example.com"), Identifier("ip", "2001:db8::1")]
    for value, refused in (({"type": "dns", "value": "10.0.0.1"}, "rejectedIdentifier"),
                           ({"type": "ip", "value": "vpn.example.com"}, "malformed"),
                           ({"type": "dns", "value": "*.example.com"}, "rejectedIdentifier")):
        assert problem_type(lambda value=value: parse_identifiers([value])) == refused
    assert problem_type(lambda: parse_identifiers([{"type": "dns"}])) == "malformed"


def test_resolver_addresses() -> None:
    assert resolver_address("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert resolver_address("[2001:db8::53]:53") == ("2001:db8::53", 53)
    assert resolver_address("2001:db8::53") == ("2001:db8::53", 53)
    with pytest.raises(ConfigError):
        resolver_address("dns.example.com")
