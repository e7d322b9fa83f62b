"""Publishing revocation: CRL regeneration and OCSP re-signing, on schedule and at once on revoke."""

from __future__ import annotations

import logging

from ocsp.service import OcspService, load_ocsp_service
from vpnca.authority import Authority
from vpnca.crl import PublishedCrl, generate_crl, generate_delta_crl
from vpnca.events import emit

log = logging.getLogger("vpnca.revocation")


class Publisher:
    """The sub-CA (for CRLs) and the OCSP signer (for responses), both on the token."""

    def __init__(self, authority: Authority, ocsp: OcspService | None = None) -> None:
        self.authority = authority
        self.ocsp = ocsp or load_ocsp_service(authority.settings, authority.store)

    def regenerate_crl(self, actor: str = "crl-job") -> PublishedCrl:
        return generate_crl(self.authority, actor=actor)

    def presign_backlog(self) -> int:
        done = self.ocsp.presign_backlog()
        if done:
            emit("ocsp.published", requester="scheduler", certificates=done)
        return done

    def publish_revocation(self, serial: str, actor: str) -> PublishedCrl:
        """After a revoke or a hold release: re-sign that serial's OCSP answers, then a new CRL
        (a delta CRL against the current full one when deltas are configured, else a full CRL).
        A revocation (or hold) first cuts off the managed gateway's SAs of that certificate."""
        from vpnca.gateway.sessions import cut_off_quietly

        cut_off_quietly(self.authority.settings, self.authority.store, serial, actor=actor)
        self.ocsp.presign_serials([serial])
        emit("ocsp.published", requester=actor, serial=serial)
        if self.authority.settings.crl.delta:
            delta = generate_delta_crl(self.authority, actor=actor)
            if delta is not None:
                return delta
        return self.regenerate_crl(actor)
