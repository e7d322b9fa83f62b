"""Renewing the gateway certificate at 2/3 of its lifetime and pushing it to charon."""

from __future__ import annotations

import logging

from vpnca.authority import Authority
from vpnca.gateway.credentials import GatewayFiles, enroll_gateway, needs_renewal
from vpnca.gateway.vici_client import ca_chain, push

log = logging.getLogger("vpnca.gateway")


def renew_gateway_if_due(authority: Authority) -> str | None:
    """Re-issue with a fresh key and push over VICI when due, or push again a certificate whose
    earlier push failed; None when nothing was due."""
    files = GatewayFiles.of(authority.settings)
    if not files.cert.exists():
        return None
    if needs_renewal(authority, files):
        old = files.certificate().serial_number
        cert = enroll_gateway(authority, requester="scheduler")
        push(authority.settings, ca_chain(authority))
        log.info("gateway certificate renewed: %x -> %x, pushed to charon", old, cert.serial_number)
        return f"renewed {old:x} -> {cert.serial_number:x}"
    current = format(files.certificate().serial_number, "x")
    if files.pushed_serial() != current:
        push(authority.settings, ca_chain(authority))
        return f"pushed {current}"
    return None
