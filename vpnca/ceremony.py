"""The `init` ceremony: the CA hierarchy (root, sub-CA, OCSP signer, SCEP RA) created, its keys opened."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsm import (
    KeySpec,
    Token,
    generate_software_key,
    load_software_key,
    save_software_key,
)
from vpnca.config import Settings
from vpnca.crl import generate_root_crl
from vpnca.errors import ConfigError, Conflict
from vpnca.issuer import BACKDATE, CaKey, hash_for, open_settings_token, token_key
from vpnca.store import Store
from vpnca.x509util import random_serial, serial_hex, to_pem


def root_dir(settings: Settings) -> Path:
    return settings.home / "root"


def root_passphrase(settings: Settings, *, create: bool) -> bytes:
    """The root key's passphrase from VPNCA_ROOT_PASSPHRASE_FILE, or the development file."""
    path = Path(os.environ.get("VPNCA_ROOT_PASSPHRASE_FILE") or root_dir(settings) / "passphrase")
    if path.exists():
        return path.read_text().strip().encode()
    if not create:
        raise ConfigError(f"root key passphrase not found ({path}); set VPNCA_ROOT_PASSPHRASE_FILE")
    passphrase = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(passphrase)
    return passphrase.encode()


def key_labels(settings: Settings) -> dict[str, str]:
    name = settings.ca.name
    return {"root": f"{name}-root", "sub": f"{name}-sub", "ocsp": f"{name}-ocsp"}


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _ca_key_usage(*, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def _name_constraints(settings: Settings) -> x509.NameConstraints:
    permitted: list[x509.GeneralName] = []
    for domain in settings.policy.allowed_domains:
        permitted += [x509.DNSName(domain), x509.RFC822Name(domain), x509.RFC822Name("." + domain)]
    for network in settings.policy.allowed_ip_ranges:
        permitted.append(x509.IPAddress(ipaddress.ip_network(network)))
    return x509.NameConstraints(permitted_subtrees=permitted or None, excluded_subtrees=None)


def build_ca_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate | None,
    issuer_key: CaKey,
    lifetime: timedelta,
    path_length: int,
    name_constraints: x509.NameConstraints | None = None,
    crl_url: str | None = None,
) -> x509.Certificate:
    """A root (issuer None: self-signed) or subordinate CA certificate (with the issuer's CRL URL)."""
    now = datetime.now(UTC)
    issuer_public = issuer.public_key() if issuer else public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(digital_signature=issuer is not None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    if crl_url is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
            crl_issuer=None)]), critical=False)
    return builder.sign(issuer_key, hash_for(issuer_key))


def build_ocsp_signer(
    *, settings: Settings, public_key: ec.EllipticCurvePublicKey, issuer: x509.Certificate, issuer_key: CaKey
) -> x509.Certificate:
    """A delegated OCSP signing certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck)."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{settings.ca.sub_common_name} OCSP Responder", settings.ca.organization))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + settings.ca.ocsp_signer_lifetime, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer_key, hash_for(issuer_key))
    )


@dataclass(frozen=True)
class Hierarchy:
    root: x509.Certificate
    sub: x509.Certificate
    ocsp_signer: x509.Certificate


def write_public_files(settings: Settings, hierarchy: Hierarchy) -> None:
    """root.pem, sub.pem, chain.pem and ocsp-signer.pem under VPNCA_HOME/ca for operators."""
    out = settings.home / "ca"
    out.mkdir(parents=True, exist_ok=True)
    (out / "root.pem").write_bytes(to_pem(hierarchy.root))
    (out / "sub.pem").write_bytes(to_pem(hierarchy.sub))
    (out / "chain.pem").write_bytes(to_pem(hierarchy.sub) + to_pem(hierarchy.root))
    (out / "ocsp-signer.pem").write_bytes(to_pem(hierarchy.ocsp_signer))


def initialise(settings: Settings, store: Store, *, actor: str) -> Hierarchy:
    """Create the root, the token-held sub-CA and the OCSP signer; refuse if a CA exists."""
    store.init_schema()  # a new database gets the current schema; an existing one must be current
    if store.current_ca("sub") is not None:
        raise Conflict(f"a CA already exists in {settings.database_url}; refusing to overwrite it")
    token = open_settings_token(settings)
    labels = key_labels(settings)
    for role in ("sub", "ocsp") + (("root",) if settings.ca.root_key == "token" else ()):
        if token.has_key(labels[role]):
            raise Conflict(f"token {token.label} already holds a key labelled {labels[role]!r}")

    root_key: CaKey
    if settings.ca.root_key == "token":
        token.generate(KeySpec(labels["root"], "ec-p384"))
        root_key = token_key(token, labels["root"])
    else:
        root_dir(settings).mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = root_dir(settings) / "root-key.pem"
        if key_path.exists():
            raise Conflict(f"{key_path} exists; refusing to overwrite the root key")
        software_root = generate_software_key("ec-p384")
        save_software_key(software_root, key_path, root_passphrase(settings, create=True))
        root_key = software_root
    root = build_ca_certificate(
        subject=_name(settings.ca.root_common_name, settings.ca.organization),
        public_key=root_key.public_key(), issuer=None, issuer_key=root_key,
        lifetime=settings.ca.root_lifetime, path_length=1,
    )
    store.add_ca_certificate(
        role="root", ca_name=settings.ca.name, serial=serial_hex(root.serial_number),
        der=root.public_bytes(Encoding.DER),
        key_label=labels["root"] if settings.ca.root_key == "token" else None,
        actor=actor, details={"role": "root", "subject": root.subject.rfc4514_string(),
                              "serial": serial_hex(root.serial_number), "key": settings.ca.root_key},
    )

    token.generate(KeySpec(labels["sub"], "ec-p384"))
    sub_key = token_key(token, labels["sub"])
    sub = build_ca_certificate(
        subject=_name(settings.ca.sub_common_name, settings.ca.organization),
        public_key=sub_key.public_key(), issuer=root, issuer_key=root_key,
        lifetime=min(settings.ca.sub_lifetime, settings.ca.root_lifetime - timedelta(days=1)),
        path_length=0,
        name_constraints=_name_constraints(settings) if settings.ca.name_constraints else None,
        crl_url=settings.root_crl_url,
    )
    store.add_ca_certificate(
        role="sub", ca_name=settings.ca.name, serial=serial_hex(sub.serial_number),
        der=sub.public_bytes(Encoding.DER), key_label=labels["sub"], actor=actor,
        details={"role": "sub", "subject": sub.subject.rfc4514_string(),
                 "serial": serial_hex(sub.serial_number), "key_label": labels["sub"]},
    )
    generate_root_crl(settings, store, root, root_key, actor=actor)
    ocsp = issue_ocsp_signer(settings, store, token, sub, sub_key, actor=actor)
    issue_scep_ra(settings, store, token, sub, sub_key, actor=actor)
    hierarchy = Hierarchy(root=root, sub=sub, ocsp_signer=ocsp)
    write_public_files(settings, hierarchy)
    return hierarchy


def issue_ocsp_signer(
    settings: Settings, store: Store, token: Token, sub: x509.Certificate, sub_key: CaKey, *, actor: str
) -> x509.Certificate:
    """Generate a new OCSP signing key on the token and certify it with the sub-CA."""
    generation = len(store.ca_certificates("ocsp")) + 1
    label = f"{key_labels(settings)['ocsp']}-{generation}"
    token.generate(KeySpec(label, settings.ocsp.signer_key))
    key = token_key(token, label)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = build_ocsp_signer(settings=settings, public_key=key.public_key(), issuer=sub, issuer_key=sub_key)
    store.add_ca_certificate(
        role="ocsp", ca_name=settings.ca.name, serial=serial_hex(cert.serial_number),
        der=cert.public_bytes(Encoding.DER), key_label=label, actor=actor,
        details={"role": "ocsp", "serial": serial_hex(cert.serial_number), "key_label": label},
    )
    return cert


def issue_scep_ra(settings: Settings, store: Store, token: Token, sub: x509.Certificate, sub_key: CaKey, *,
                  actor: str) -> x509.Certificate:
    """The SCEP RA: an RSA-3072 key on the token that signs CertReps and unwraps request keys."""
    generation = len(store.ca_certificates("scep-ra")) + 1
    label = f"{settings.ca.name}-scep-ra-{generation}"
    token.generate(KeySpec(label, "rsa-3072"))
    key = token_key(token, label)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{settings.ca.sub_common_name} SCEP RA", settings.ca.organization))
        .issuer_name(sub.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=365), sub.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(sub.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(sub_key, hash_for(sub_key))
    )
    store.add_ca_certificate(role="scep-ra", ca_name=settings.ca.name, serial=serial_hex(cert.serial_number),
                             der=cert.public_bytes(Encoding.DER), key_label=label, actor=actor,
                             details={"role": "scep-ra", "serial": serial_hex(cert.serial_number),
                                      "key_label": label})
    (settings.home / "ca").mkdir(parents=True, exist_ok=True)
    (settings.home / "ca" / "scep-ra.pem").write_bytes(to_pem(cert))
    return cert


def load_root_key(settings: Settings) -> CaKey:
    """The root key, for the rare root operations (signing a new sub-CA)."""
    if settings.ca.root_key == "token":
        return token_key(open_settings_token(settings), key_labels(settings)["root"])
    return load_software_key(root_dir(settings) / "root-key.pem", root_passphrase(settings, create=False))
