"""Renewing each gateway certificate vpnca holds at 2/3 of its lifetime and pushing it to charon."""

from __future__ import annotations

import logging

from vpnca.authority import Authority
from vpnca.config import GatewaySettings
from vpnca.gateway import fleet
from vpnca.gateway.credentials import GatewayFiles, enroll_gateway, needs_renewal
from vpnca.gateway.vici_client import GatewayError, ca_chain, push

log = logging.getLogger("vpnca.gateway")


def renew_one(authority: Authority, gw: GatewaySettings) -> str | None:
    """Re-issue with a fresh key and push over VICI when due, or push again a certificate whose
    earlier push failed; None when nothing was due. (A gateway whose agent holds its key renews itself.)"""
    settings = authority.settings
    files = GatewayFiles.of(settings, gw)
    if gw.credentials != "ca" or not files.cert.exists():
        return None
    name = fleet.name_of(settings, gw)
    if needs_renewal(authority, files, gw=gw):
        old = files.certificate().serial_number
        cert = enroll_gateway(authority, requester="scheduler", gw=gw)
        push(settings, ca_chain(authority), gw=gw)
        log.info("gateway %s certificate renewed: %x -> %x, pushed to charon", name, old, cert.serial_number)
        return f"{name}: renewed {old:x} -> {cert.serial_number:x}"
    current = format(files.certificate().serial_number, "x")
    if files.pushed_serial() != current:
        push(settings, ca_chain(authority), gw=gw)
        return f"{name}: pushed {current}"
    return None


def renew_gateway_if_due(authority: Authority) -> str | None:
    """`renew_one` for every managed gateway; a failure of one does not keep the others from renewal
    and is raised afterwards (the scheduler records and retries it)."""
    done: list[str] = []
    failed: GatewayError | None = None
    gateways = fleet.managed(authority.settings) or [authority.settings.gateway]
    for gw in gateways:
        try:
            outcome = renew_one(authority, gw)
        except GatewayError as exc:
            failed = failed or exc
            continue
        if outcome:
            done.append(outcome)
    if failed is not None:
        raise failed
    return "; ".join(done) or None
