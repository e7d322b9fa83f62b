"""CRLs: full, delta and shard CRLs, signed by the sub-CA on the token, published as files and in the
database.

A CRL is assembled from the DER of its entries as stored at revocation (`certificates.crl_entry`):
the TBSCertList is the concatenation of those entries between a few encoded fields, so nothing is
encoded again and no object is built per entry; the token signs the TBS once.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vpnca.authority import Authority
from vpnca.config import Settings
from vpnca.crlshards import shard_name, shard_url
from vpnca.errors import Conflict
from vpnca.events import emit
from vpnca.issuer import CaKey, hash_for
from vpnca.store import CrlRecord, Store
from vpnca.store.crls import crl_entries, crl_entries_since, latest_crl_header, released_since
from vpnca.store.repository import CrlNumberTaken
from vpnca.x509util import crl_entry_der, der_integer, der_time, der_tlv, distribution_points

log = logging.getLogger("vpnca.crl")
CRL_NUMBER_ATTEMPTS = 5

_V2 = der_integer(1)
_NULL = b"\x05\x00"
_SIGNATURE_OIDS = {  # (key type, hash) -> the content octets of the signature algorithm's OID
    ("ec", "sha256"): "2a8648ce3d040302", ("ec", "sha384"): "2a8648ce3d040303",
    ("ec", "sha512"): "2a8648ce3d040304", ("rsa", "sha256"): "2a864886f70d01010b",
    ("rsa", "sha384"): "2a864886f70d01010c", ("rsa", "sha512"): "2a864886f70d01010d",
}


@dataclass(frozen=True)
class PublishedCrl:
    number: int
    entries: int
    crl: x509.CertificateRevocationList
    delta_base: int | None = None
    name: str = ""  # the file and URL name: the CA's, its delta's or a shard's
    shard: int | None = None

    def describe(self) -> str:
        """What the CLI says it published."""
        if self.delta_base is not None:
            return f"delta CRL {self.number} (base {self.delta_base})"
        if self.shard is not None:
            return f"shard {self.shard} CRL {self.number}"
        return f"full CRL {self.number}"


def _signature_algorithm(key: CaKey, digest: hashes.HashAlgorithm) -> bytes:
    kind = "ec" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
    oid = der_tlv(0x06, bytes.fromhex(_SIGNATURE_OIDS[kind, digest.name]))
    return der_tlv(0x30, oid if kind == "ec" else oid + _NULL)  # RFC 5758: no parameters for ECDSA


def _extension(extension: x509.ExtensionType, critical: bool) -> bytes:
    oid = der_tlv(0x06, _oid_octets(extension.oid.dotted_string))
    return der_tlv(0x30, oid + (b"\x01\x01\xff" if critical else b"")
                   + der_tlv(0x04, extension.public_bytes()))


def _oid_octets(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        rest, chunk = arc >> 7, [arc & 0x7F]
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _sign(*, issuer: x509.Certificate, key: CaKey, url: str, number: int, this_update: datetime,
          next_update: datetime, entries: bytes, delta_base: int | None = None,
          ca_certs: bool = False, freshest_url: str | None = None) -> bytes:
    """The DER of a CRL over `entries` (revokedCertificates entries, DER, concatenated), signed on the token.
    The Issuing Distribution Point names `url`; the root's names none (it also covers the root)."""
    idp = x509.IssuingDistributionPoint(
        full_name=None if ca_certs else [x509.UniformResourceIdentifier(url)], relative_name=None,
        only_contains_user_certs=not ca_certs, only_contains_ca_certs=ca_certs, only_some_reasons=None,
        indirect_crl=False, only_contains_attribute_certs=False,
    )
    extensions = [_extension(x509.CRLNumber(number), False),
                  _extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False),
                  _extension(idp, True)]
    if delta_base is not None:
        extensions.append(_extension(x509.DeltaCRLIndicator(delta_base), True))
    elif freshest_url is not None:  # a full CRL says where its deltas are (RFC 5280 5.2.6)
        extensions.append(_extension(x509.FreshestCRL(distribution_points(freshest_url)), False))
    digest = hash_for(key)
    algorithm = _signature_algorithm(key, digest)
    tbs = der_tlv(0x30, b"".join((
        _V2, algorithm, issuer.subject.public_bytes(), der_time(this_update), der_time(next_update),
        der_tlv(0x30, entries) if entries else b"",  # RFC 5280 5.1.2.6: absent when empty
        der_tlv(0xA0, der_tlv(0x30, b"".join(extensions))),
    )))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs, ec.ECDSA(digest))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(tbs, padding.PKCS1v15(), digest)
    return der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\x00" + signature))


def _publish(store: Store, directory: Path, *, name: str, ca_name: str, number: int, der: bytes,
             entries: int, this_update: datetime, next_update: datetime, delta_base: int | None,
             actor: str) -> PublishedCrl:
    crl = x509.load_der_x509_crl(der)
    store.add_crl(CrlRecord(number=number, ca_name=ca_name, delta_base=delta_base, this_update=this_update,
                            next_update=next_update, entries=entries, der=der), actor=actor)
    write_crl_files(directory, name, crl, der)
    emit("crl.published", requester=actor, crl=name, number=number, entries=entries,
         delta_base=delta_base, next_update=next_update.isoformat())
    return PublishedCrl(number=number, entries=entries, crl=crl, delta_base=delta_base, name=name)


def _numbered(store: Store, sign_and_publish: Callable[[int], PublishedCrl]) -> PublishedCrl:
    """Sign and record under the next CRL number. The number is read before signing, so two publishers
    at once (the hourly full CRL beside a revocation's delta, in another process) may draw the same one:
    the second to record it signs again with the next number, and only a recorded CRL is written out."""
    for _ in range(CRL_NUMBER_ATTEMPTS):
        number = store.next_crl_number()
        try:
            return sign_and_publish(number)
        except CrlNumberTaken:
            log.info("CRL number %d was recorded by another publisher; signing with the next one", number)
    raise Conflict("no free CRL number: too many publishers at once")


def generate_root_crl(settings: Settings, store: Store, root: x509.Certificate, root_key: CaKey, *,
                      actor: str) -> PublishedCrl:
    """The offline root's CRL over the CA certificates it issued (none revoked: a compromised sub-CA
    is replaced by a new hierarchy), signed for `ca.root_crl_lifetime`."""
    now = datetime.now(UTC)
    next_update = now + settings.ca.root_crl_lifetime
    return _numbered(store, lambda number: _publish(
        store, settings.home / "crl", name=settings.root_crl_name, ca_name=settings.root_crl_name,
        number=number, entries=0, this_update=now, next_update=next_update, delta_base=None, actor=actor,
        der=_sign(issuer=root, key=root_key, url=settings.root_crl_url, number=number, this_update=now,
                  next_update=next_update, entries=b"", ca_certs=True)))


def generate_crl(authority: Authority, *, actor: str = "crl-job",
                 now: datetime | None = None) -> PublishedCrl:
    """Sign a full CRL of the revoked or held certificates; store it, write the files. With shards
    configured, every shard's CRL is signed too; with deltas, a delta CRL against this one.

    An expired certificate leaves the CRL once it has been on one full CRL issued after it expired
    (RFC 5280 3.3): entries are kept while the certificate was still valid when the previous full CRL
    was issued, so the CRL follows the revoked certificates that are still valid, not the CA's history.
    """
    settings = authority.settings
    now = now or authority.clock.now()
    published = _full_crl(authority, name=authority.name, url=settings.crl_url, shard=None, actor=actor,
                          now=now, freshest_url=settings.delta_crl_url if settings.crl.delta else None)
    for shard in range(settings.crl.shards):
        generate_shard_crl(authority, shard, actor=actor, now=now)
    if settings.crl.delta:
        generate_delta_crl(authority, actor=actor, now=now)
    return published


def generate_shard_crl(authority: Authority, shard: int, *, actor: str = "crl-job",
                       now: datetime | None = None) -> PublishedCrl:
    """The CRL of one shard: the revoked certificates whose distribution point is that shard's."""
    name = shard_name(authority.settings, shard)
    published = _full_crl(authority, name=name, url=shard_url(authority.settings, shard), shard=shard,
                          actor=actor, now=now or authority.clock.now())
    return replace(published, shard=shard)


def _full_crl(authority: Authority, *, name: str, url: str, shard: int | None, actor: str, now: datetime,
              freshest_url: str | None = None) -> PublishedCrl:
    settings, store = authority.settings, authority.store
    previous = latest_crl_header(store, name)
    entries, count = crl_entries(store, authority.name, shard=shard,
                                 expired_since=previous[1] if previous else None)
    next_update = now + settings.crl.next_update
    return _numbered(store, lambda number: _publish(
        store, settings.home / "crl", name=name, ca_name=name, number=number, entries=count,
        this_update=now, next_update=next_update, delta_base=None, actor=actor,
        der=_sign(issuer=authority.certificate, key=authority.key, url=url, number=number,
                  this_update=now, next_update=next_update, entries=entries, freshest_url=freshest_url)))


def generate_delta_crl(authority: Authority, *, actor: str = "crl-job",
                       now: datetime | None = None) -> PublishedCrl | None:
    """A delta CRL against the latest full CRL: revocations since it, and holds released since it.
    It reads only those rows (indexed by revocation and release time), whatever the CRL's size."""
    settings, store = authority.settings, authority.store
    base = latest_crl_header(store, authority.name)
    if base is None:
        return None
    base_number, base_update = base
    now = now or authority.clock.now()
    revoked, count = crl_entries_since(store, authority.name, base_update)
    released = released_since(store, authority.name, base_update)
    entries = revoked + b"".join(crl_entry_der(int(serial, 16), at, "removeFromCRL")
                                 for serial, at in released)
    next_update = now + settings.crl.delta_next_update
    return _numbered(store, lambda number: _publish(
        store, settings.home / "crl", name=settings.delta_crl_name, ca_name=authority.name, number=number,
        entries=count + len(released), this_update=now, next_update=next_update, delta_base=base_number,
        actor=actor,
        der=_sign(issuer=authority.certificate, key=authority.key, url=settings.crl_url, number=number,
                  this_update=now, next_update=next_update, entries=entries, delta_base=base_number)))


def write_crl_files(directory: Path, name: str, crl: x509.CertificateRevocationList,
                    der: bytes | None = None) -> None:
    """`name`.crl (DER) and `name`.pem, each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    der = der or crl.public_bytes(serialization.Encoding.DER)
    for suffix, data in ((".crl", der), (".pem", _pem(der))):
        target = directory / f"{name}{suffix}"
        tmp = target.with_suffix(suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def _pem(der: bytes) -> bytes:
    """RFC 7468 PEM of a CRL, straight from its DER (64 base64 characters a line)."""
    text = base64.b64encode(der)
    lines = b"\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return b"-----BEGIN X509 CRL-----\n" + lines + b"\n-----END X509 CRL-----\n"
