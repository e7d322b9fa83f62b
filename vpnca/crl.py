"""CRLs: full and delta, signed by the sub-CA on the token, published as files and in the database."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vpnca.authority import Authority
from vpnca.config import Settings
from vpnca.events import emit
from vpnca.issuer import REVOCATION_REASONS, CaKey, hash_for
from vpnca.store import CrlRecord, Store
from vpnca.x509util import distribution_points

log = logging.getLogger("vpnca.crl")


@dataclass(frozen=True)
class PublishedCrl:
    number: int
    entries: int
    crl: x509.CertificateRevocationList
    delta_base: int | None = None


def _revoked(serial: str, revoked_at: datetime, reason: str | None,
             invalidity: datetime | None) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(revoked_at)
    if reason and reason != "unspecified":
        builder = builder.add_extension(x509.CRLReason(REVOCATION_REASONS[reason]), critical=False)
    if invalidity is not None:
        builder = builder.add_extension(x509.InvalidityDate(invalidity.replace(tzinfo=None)), critical=False)
    return builder.build()


def _sign(*, issuer: x509.Certificate, key: CaKey, url: str, number: int, this_update: datetime,
          next_update: datetime, revoked: list[x509.RevokedCertificate], delta_base: int | None = None,
          ca_certs: bool = False, freshest_url: str | None = None) -> x509.CertificateRevocationList:
    """Build and sign (on the token for the sub-CA). The revoked list goes to the constructor in one
    piece: add_revoked_certificate copies the list on every call, which is quadratic at 10^5 entries."""
    # the root's CRL names no distribution point: it also covers the root itself, which has no CDP
    idp = x509.IssuingDistributionPoint(
        full_name=None if ca_certs else [x509.UniformResourceIdentifier(url)], relative_name=None,
        only_contains_user_certs=not ca_certs, only_contains_ca_certs=ca_certs, only_some_reasons=None,
        indirect_crl=False, only_contains_attribute_certs=False,
    )
    extensions = [
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        x509.Extension(x509.AuthorityKeyIdentifier.oid, False,
                       x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())),
        x509.Extension(x509.IssuingDistributionPoint.oid, True, idp),
    ]
    if delta_base is not None:
        extensions.append(x509.Extension(x509.DeltaCRLIndicator.oid, True,
                                         x509.DeltaCRLIndicator(delta_base)))
    elif freshest_url is not None:  # a full CRL says where its deltas are (RFC 5280 5.2.6)
        extensions.append(x509.Extension(x509.FreshestCRL.oid, False,
                                         x509.FreshestCRL(distribution_points(freshest_url))))
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject, last_update=this_update, next_update=next_update,
        extensions=extensions, revoked_certificates=revoked,
    )
    return builder.sign(key, hash_for(key))


def generate_root_crl(settings: Settings, store: Store, root: x509.Certificate, root_key: CaKey, *,
                      actor: str) -> PublishedCrl:
    """The offline root's CRL over the CA certificates it issued (none revoked: a compromised sub-CA
    is replaced by a new hierarchy), signed for `ca.root_crl_lifetime`."""
    now = datetime.now(UTC)
    number = store.next_crl_number()
    next_update = now + settings.ca.root_crl_lifetime
    crl = _sign(issuer=root, key=root_key, url=settings.root_crl_url, number=number, this_update=now,
                next_update=next_update, revoked=[], ca_certs=True)
    store.add_crl(CrlRecord(number=number, ca_name=settings.root_crl_name, delta_base=None, this_update=now,
                            next_update=next_update, entries=0,
                            der=crl.public_bytes(serialization.Encoding.DER)),
                  actor=actor)
    write_crl_files(settings.home / "crl", settings.root_crl_name, crl)
    emit("crl.published", requester=actor, number=number, entries=0, issuer="root")
    return PublishedCrl(number=number, entries=0, crl=crl)


def generate_crl(authority: Authority, *, actor: str = "crl-job",
                 now: datetime | None = None) -> PublishedCrl:
    """Sign a full CRL of the revoked or held certificates; store it, write the files.

    An expired certificate leaves the CRL once it has been on one full CRL issued after it expired
    (RFC 5280 3.3): entries are kept while the certificate was still valid when the previous full CRL
    was issued, so the CRL follows the revoked certificates that are still valid, not the CA's history.
    """
    settings, store = authority.settings, authority.store
    now = now or datetime.now(UTC)
    number = store.next_crl_number()
    previous = store.latest_crl(authority.name)
    entries = store.revoked_entries(authority.name, expired_since=previous.this_update if previous else None)
    crl = _sign(issuer=authority.certificate, key=authority.key, url=settings.crl_url, number=number,
                this_update=now, next_update=now + settings.crl.next_update,
                revoked=[_revoked(*e) for e in entries],
                freshest_url=settings.delta_crl_url if settings.crl.delta else None)
    der = crl.public_bytes(serialization.Encoding.DER)
    store.add_crl(CrlRecord(number=number, ca_name=authority.name, delta_base=None, this_update=now,
                            next_update=now + settings.crl.next_update, entries=len(entries), der=der),
                  actor=actor)
    write_crl_files(settings.home / "crl", authority.name, crl)
    emit("crl.published", requester=actor, number=number, entries=len(entries),
         next_update=(now + settings.crl.next_update).isoformat())
    published = PublishedCrl(number=number, entries=len(entries), crl=crl)
    if settings.crl.delta:
        generate_delta_crl(authority, base=published, actor=actor)
    return published


def generate_delta_crl(authority: Authority, *, base: PublishedCrl | None = None,
                       actor: str = "crl-job") -> PublishedCrl | None:
    """A delta CRL against the latest full CRL: revocations since it, and holds released since it."""
    settings, store = authority.settings, authority.store
    base_record = store.latest_crl(authority.name)
    if base_record is None:
        return None
    now = datetime.now(UTC)
    number = store.next_crl_number()
    entries = [e for e in store.revoked_entries(authority.name) if e[1] >= base_record.this_update]
    released = store.released_since(authority.name, base_record.this_update)
    revoked = [_revoked(*e) for e in entries] + [
        x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(released_at)
        .add_extension(x509.CRLReason(x509.ReasonFlags.remove_from_crl), critical=False).build()
        for serial, released_at in released
    ]
    crl = _sign(issuer=authority.certificate, key=authority.key, url=settings.crl_url, number=number,
                this_update=now, next_update=now + settings.crl.delta_next_update, revoked=revoked,
                delta_base=base_record.number)
    count = len(entries) + len(released)
    store.add_crl(CrlRecord(number=number, ca_name=authority.name, delta_base=base_record.number,
                            this_update=now, next_update=now + settings.crl.delta_next_update, entries=count,
                            der=crl.public_bytes(serialization.Encoding.DER)), actor=actor)
    write_crl_files(settings.home / "crl", settings.delta_crl_name, crl)
    emit("crl.published", requester=actor, number=number, entries=len(entries) + len(released),
         delta_base=base_record.number)
    return PublishedCrl(number=number, entries=count, crl=crl, delta_base=base_record.number)


def write_crl_files(directory: Path, name: str, crl: x509.CertificateRevocationList) -> None:
    """`name`.crl (DER) and `name`.pem, each replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for suffix, encoding in ((".crl", serialization.Encoding.DER), (".pem", serialization.Encoding.PEM)):
        target = directory / f"{name}{suffix}"
        tmp = target.with_suffix(suffix + ".tmp")
        tmp.write_bytes(crl.public_bytes(encoding))
        os.replace(tmp, target)
