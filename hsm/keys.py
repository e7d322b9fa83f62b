"""Token keys as cryptography private-key objects.

cryptography's builders (certificates, CRLs, OCSP responses) call `sign()` on a private-key
subclass, so everything the CA signs is built by cryptography and signed on the token. The
private half never leaves the token: the export methods refuse. A key holds its label, not a PKCS#11
handle: the token looks the handle up again after it reopened its session.
"""

from __future__ import annotations

from typing import Any, NoReturn

from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, Mechanism, ObjectClass

from hsm.errors import HsmError
from hsm.token import Token

CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
    "1.3.132.0.35": ec.SECP521R1(),
}

DIGEST_INFO_PREFIX = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}


def _digest(data: bytes | bytearray | memoryview,
            algorithm: hashes.HashAlgorithm | utils.Prehashed) -> tuple[bytes, str]:
    if isinstance(algorithm, utils.Prehashed):
        return bytes(data), algorithm._algorithm.name
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize(), algorithm.name


def _refuse_export(*_: Any, **__: Any) -> NoReturn:
    raise HsmError("token keys are not extractable")


class TokenEcPrivateKey(ec.EllipticCurvePrivateKey):
    """An ECDSA key on the token."""

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self.label = label
        token.private_key(label)  # KeyNotFound now rather than at the first signature
        attrs = token.key_attributes(ObjectClass.PUBLIC_KEY, label, [Attribute.EC_PARAMS, Attribute.EC_POINT])
        curve_oid = ECDomainParameters.load(attrs[Attribute.EC_PARAMS]).chosen.dotted
        self._curve = CURVES[curve_oid]
        point = bytes(OctetString.load(attrs[Attribute.EC_POINT]))
        self._public = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, point)

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise HsmError(f"unsupported EC signature algorithm {signature_algorithm!r}")
        digest, _ = _digest(data, signature_algorithm.algorithm)
        raw = self._token.sign(self.label, digest, Mechanism.ECDSA)
        half = len(raw) // 2  # PKCS#11 gives r || s; X.509 wants the DER SEQUENCE
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._curve

    @property
    def key_size(self) -> int:
        return self._curve.key_size

    exchange = _refuse_export
    private_numbers = _refuse_export
    private_bytes = _refuse_export

    def __copy__(self) -> TokenEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenEcPrivateKey:
        return self


class TokenRsaPrivateKey(rsa.RSAPrivateKey):
    """An RSA key on the token (PKCS#1 v1.5 and PSS signatures)."""

    def __init__(self, token: Token, label: str) -> None:
        self._token = token
        self.label = label
        token.private_key(label)  # KeyNotFound now rather than at the first signature
        attrs = token.key_attributes(ObjectClass.PUBLIC_KEY, label,
                                     [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
        self._public = rsa.RSAPublicNumbers(
            int.from_bytes(attrs[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(attrs[Attribute.MODULUS], "big"),
        ).public_key()

    def sign(
        self,
        data: bytes,
        padding_: padding.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | utils.Prehashed | utils.NoDigestInfo,
    ) -> bytes:
        if not isinstance(algorithm, hashes.HashAlgorithm | utils.Prehashed):  # NoDigestInfo: not offered
            raise HsmError(f"unsupported RSA signature algorithm {algorithm!r}")
        digest, name = _digest(data, algorithm)
        if name not in DIGEST_INFO_PREFIX:
            raise HsmError(f"unsupported RSA digest {name}")
        if isinstance(padding_, padding.PKCS1v15):
            return self._token.sign(self.label, DIGEST_INFO_PREFIX[name] + digest, Mechanism.RSA_PKCS)
        if isinstance(padding_, padding.PSS):
            salt = padding_._salt_length
            if not isinstance(salt, int):
                salt = len(digest)
            hash_mech, mgf = PSS_PARAMS[name]
            return self._token.sign(
                self.label, digest, Mechanism.RSA_PKCS_PSS, mechanism_param=(hash_mech, mgf, salt)
            )
        raise HsmError(f"unsupported RSA padding {padding_.name}")

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        """RSA key transport (SCEP, CMS EnvelopedData): PKCS#1 v1.5 on the token."""
        if not isinstance(padding_, padding.PKCS1v15):
            raise HsmError(f"unsupported RSA decryption padding {padding_.name}")
        return self._token.decrypt(self.label, ciphertext, Mechanism.RSA_PKCS)

    private_numbers = _refuse_export
    private_bytes = _refuse_export

    def __copy__(self) -> TokenRsaPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenRsaPrivateKey:
        return self
