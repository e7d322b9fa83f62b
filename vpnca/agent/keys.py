"""The endpoint's private key, made where it stays: a PEM file (PKCS#8, 0600) or a key pair generated on
the endpoint's own PKCS#11 token as sensitive and never extractable (through `hsm`, the generic token
package; this is the agent's token, never the CA's). And the CSR it signs."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pkcs11 import ObjectClass

from hsm import HsmError, KeySpec, Token, TokenEcPrivateKey, TokenRsaPrivateKey, open_token
from vpnca.agent.errors import AgentError, UsageError
from vpnca.agent.state import KeyRef
from vpnca.errors import BadRequest
from vpnca.identities import IkeIdentity

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072")
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def parse_identity(text: str) -> IkeIdentity:
    try:
        return IkeIdentity.parse(text)
    except BadRequest as exc:
        raise UsageError(f"--id: {exc}") from exc


def build_csr(identity: IkeIdentity, key: SigningKey) -> x509.CertificateSigningRequest:
    """A CSR naming `identity` as vpnca issues it: a SAN (dNSName, iPAddress, rfc822Name) with
    CN=<identity>, or a distinguished name as the subject."""
    builder = x509.CertificateSigningRequestBuilder()
    if identity.kind == "dn":
        builder = builder.subject_name(x509.Name.from_rfc4514_string(identity.value))
    else:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.value)]))
        name: x509.GeneralName
        if identity.kind == "ip":
            name = x509.IPAddress(ipaddress.ip_address(identity.value))
        elif identity.kind == "email":
            name = x509.RFC822Name(identity.value)
        else:
            name = x509.DNSName(identity.value)
        builder = builder.add_extension(x509.SubjectAlternativeName([name]), critical=False)
    digest = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.key_size >= 384 \
        else hashes.SHA256()
    return builder.sign(key, digest)


def csr_for_subject(subject: x509.Name, san: x509.SubjectAlternativeName | None,
                    key: SigningKey) -> x509.CertificateSigningRequest:
    """A re-enrollment CSR: the subject and SANs of the current certificate (RFC 7030 4.2.2)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    digest = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.key_size >= 384 \
        else hashes.SHA256()
    return builder.sign(key, digest)


def generate_file_key(algorithm: str) -> SigningKey:
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise UsageError(f"unknown key type {algorithm!r}: one of {', '.join(KEY_TYPES)}")


def key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_file_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError) as exc:
        raise AgentError(f"cannot load the private key {path}: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise AgentError(f"{path}: unsupported key type {type(key).__name__}")
    return key


# -- PKCS#11 -------------------------------------------------------------------------------------

def read_pin_file(path: str | None) -> str:
    if not path:
        raise UsageError("a key on a PKCS#11 token needs --pin-file")
    try:
        pin = Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the PIN file {path}: {exc.strerror}") from exc
    if not pin:
        raise UsageError(f"the PIN file {path} is empty")
    return pin


@dataclass
class TokenKey:
    """A key pair on the endpoint's token and the cryptography key object that signs with it."""

    ref: KeyRef
    key: SigningKey


def _open(ref: KeyRef) -> Token:
    assert ref.module and ref.token_label
    try:
        return open_token(ref.module, ref.token_label, read_pin_file(ref.pin_file))
    except HsmError as exc:
        raise AgentError(f"token {ref.token_label!r}: {exc}") from exc


def token_key(ref: KeyRef) -> TokenKey:
    """The cryptography key object of a key pair already on the token."""
    token = _open(ref)
    assert ref.label
    try:
        key: SigningKey = TokenRsaPrivateKey(token, ref.label) if ref.algorithm.startswith("rsa") \
            else TokenEcPrivateKey(token, ref.label)
    except HsmError as exc:
        raise AgentError(f"token {ref.token_label!r}: {exc}") from exc
    return TokenKey(ref, key)


def generate_token_key(algorithm: str, *, module: str, token_label: str, pin_file: str) -> TokenKey:
    """A new key pair on the token: sensitive, never extractable; CKA_ID = CKA_LABEL (a fresh name)."""
    if algorithm not in KEY_TYPES:
        raise UsageError(f"unknown key type {algorithm!r}: one of {', '.join(KEY_TYPES)}")
    label = f"vpnca-agent-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    ref = KeyRef(kind="pkcs11", algorithm=algorithm, module=module, token_label=token_label, label=label,
                 key_id=label.encode().hex(), pin_file=pin_file)
    token = _open(ref)
    try:
        token.generate(KeySpec(label, algorithm))  # type: ignore[arg-type]
    except HsmError as exc:
        raise AgentError(f"cannot generate a key on token {token_label!r}: {exc}") from exc
    return token_key(ref)


def destroy_token_key(ref: KeyRef) -> None:
    """Remove a key pair the agent no longer uses from the token."""
    token = _open(ref)
    assert ref.label
    try:
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            handle = token.private_key(ref.label) if object_class == ObjectClass.PRIVATE_KEY \
                else token.public_key(ref.label)
            token.call(handle.destroy)
    except HsmError as exc:
        raise AgentError(f"cannot remove key {ref.label} from token {ref.token_label!r}: {exc}") from exc
