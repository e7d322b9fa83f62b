"""Partitioned CRLs (`[crl] shards = N`): each leaf names the CRL of one shard in its distribution point.

The shard is chosen when the certificate is issued, from its expiry: leaves that expire in the same
`shard_window` share a shard, so a shard's CRL holds certificates that leave it together, and a revoke
re-signs only that shard's CRL. Each shard CRL carries the matching Issuing Distribution Point. The
CA's whole CRL keeps being published for the leaves issued before sharding was on.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from vpnca.config import CrlSettings, Settings
from vpnca.x509util import distribution_points


def shard_for(crl: CrlSettings, not_after: datetime) -> int | None:
    """The shard of a leaf expiring at `not_after`; None when CRLs are not partitioned."""
    if not crl.shards:
        return None
    return int(not_after.timestamp() // crl.shard_window.total_seconds()) % crl.shards


def shard_name(settings: Settings, shard: int) -> str:
    """The shard CRL's name: its file, its URL path and its `crls.ca_name`."""
    return f"{settings.ca.name}-shard{shard}"


def shard_url(settings: Settings, shard: int) -> str:
    return f"{settings.http_base_url}/crl/{shard_name(settings, shard)}.crl"


def leaf_crl_extensions(settings: Settings, not_after: datetime) -> tuple[x509.ExtensionType, ...]:
    """A leaf's CRL distribution point (its shard's, when sharded), and with delta CRLs on the
    Freshest CRL pointer (unsharded leaves only: a delta CRL extends the whole CRL, not a shard)."""
    shard = shard_for(settings.crl, not_after)
    if shard is not None:
        return (x509.CRLDistributionPoints(distribution_points(shard_url(settings, shard))),)
    return (x509.CRLDistributionPoints(distribution_points(settings.crl_url)),
            *([x509.FreshestCRL(distribution_points(settings.delta_crl_url))] if settings.crl.delta else []))
