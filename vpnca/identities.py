"""IKE identities and the certificate names that carry them.

strongSwan matches a peer's `id` against a SAN of its certificate (dNSName, iPAddress,
rfc822Name) or against its subject DN; these are the four kinds vpnca issues.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from vpnca.errors import BadRequest

IdentityKind = Literal["fqdn", "ip", "email", "dn"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _check_fqdn(name: str) -> str:
    name = name.lower().rstrip(".")
    if "*" in name:
        raise BadRequest(f"wildcard names are not issued: {name}")
    labels = name.split(".")
    if (len(name) > 253 or (len(labels) < 2 and name != "localhost")
            or not all(_LABEL.match(label) for label in labels)):
        raise BadRequest(f"not a valid host name: {name!r}")
    return name


@dataclass(frozen=True, order=True)
class IkeIdentity:
    """One IKE identity: its kind and its canonical text."""

    kind: IdentityKind
    value: str

    @classmethod
    def parse(cls, text: str) -> IkeIdentity:
        """Classify `text` as an IP address, an email address, a DN or an FQDN."""
        text = text.strip()
        if not text:
            raise BadRequest("empty identity")
        try:
            return cls("ip", str(ipaddress.ip_address(text)))
        except ValueError:
            pass
        if "=" in text:
            try:
                name = x509.Name.from_rfc4514_string(text)
            except ValueError as exc:
                raise BadRequest(f"not a valid distinguished name: {text!r}") from exc
            if not name.rdns:
                raise BadRequest("empty distinguished name")
            return cls("dn", name.rfc4514_string())
        if "@" in text:
            local, _, domain = text.rpartition("@")
            if not local or any(c.isspace() for c in local):
                raise BadRequest(f"not a valid email identity: {text!r}")
            return cls("email", f"{local}@{_check_fqdn(domain)}")
        return cls("fqdn", _check_fqdn(text))

    @property
    def domain(self) -> str | None:
        if self.kind == "fqdn":
            return self.value
        if self.kind == "email":
            return self.value.rpartition("@")[2]
        return None

    def general_name(self) -> x509.GeneralName:
        if self.kind == "fqdn":
            return x509.DNSName(self.value)
        if self.kind == "ip":
            return x509.IPAddress(ipaddress.ip_address(self.value))
        if self.kind == "email":
            return x509.RFC822Name(self.value)
        return x509.DirectoryName(x509.Name.from_rfc4514_string(self.value))

    def __str__(self) -> str:
        return self.value


def identities_from_csr(csr: x509.CertificateSigningRequest) -> tuple[IkeIdentity, ...]:
    """The identities a CSR asks for: its SANs, or else its subject (CN as FQDN/email, or DN)."""
    found: list[IkeIdentity] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:
        raise BadRequest(f"malformed CSR extension: {exc}") from exc
    if san is not None:
        for general_name in san:
            if isinstance(general_name, x509.DNSName):
                found.append(IkeIdentity.parse(general_name.value))
            elif isinstance(general_name, x509.IPAddress):
                found.append(IkeIdentity("ip", str(general_name.value)))
            elif isinstance(general_name, x509.RFC822Name):
                found.append(IkeIdentity.parse(general_name.value))
            elif isinstance(general_name, x509.DirectoryName):
                found.append(IkeIdentity("dn", general_name.value.rfc4514_string()))
            else:
                raise BadRequest(f"unsupported subjectAltName type {type(general_name).__name__}")
    if found:
        return tuple(dict.fromkeys(found))
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(csr.subject.rdns) == 1 and len(cns) == 1:
        return (IkeIdentity.parse(str(cns[0].value)),)
    if csr.subject.rdns:
        return (IkeIdentity("dn", csr.subject.rfc4514_string()),)
    raise BadRequest("the CSR names no identity (no subjectAltName and an empty subject)")


def identities_of_certificate(cert: x509.Certificate) -> tuple[IkeIdentity, ...]:
    """The identities a certificate carries: its SANs, and its subject DN when that is not the
    CN-only subject vpnca derives from the first SAN (see `subject_for`)."""
    found: list[IkeIdentity] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    for general_name in san or []:
        if isinstance(general_name, x509.DNSName):
            found.append(IkeIdentity("fqdn", general_name.value))
        elif isinstance(general_name, x509.IPAddress):
            found.append(IkeIdentity("ip", str(general_name.value)))
        elif isinstance(general_name, x509.RFC822Name):
            found.append(IkeIdentity("email", general_name.value))
    if cert.subject.rdns and (not found or cert.subject != subject_for(tuple(found))):
        found.insert(0, IkeIdentity("dn", cert.subject.rfc4514_string()))
    return tuple(found)


CN_MAX_LENGTH = 64  # ub-common-name, RFC 5280 appendix A


def subject_for(identities: tuple[IkeIdentity, ...]) -> x509.Name:
    """The subject of a certificate for `identities`: the DN identity, or CN=<first identity>."""
    dns = [i for i in identities if i.kind == "dn"]
    if len(dns) > 1:
        raise BadRequest("at most one distinguished-name identity per certificate")
    if dns:
        return x509.Name.from_rfc4514_string(dns[0].value)
    if len(identities[0].value) > CN_MAX_LENGTH:  # a long FQDN lives in the SAN alone (made critical)
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identities[0].value)])
