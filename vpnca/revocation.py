"""Publishing revocation: CRL regeneration and OCSP re-signing, on schedule and at once on revoke."""

from __future__ import annotations

import logging
import threading

from ocsp.presign import Share
from ocsp.service import OcspService, load_ocsp_service
from vpnca.authority import Authority
from vpnca.crl import PublishedCrl, generate_crl, generate_delta_crl, generate_shard_crl
from vpnca.errors import token_errors
from vpnca.events import emit
from vpnca.store.crls import crl_shards_of

log = logging.getLogger("vpnca.revocation")


class _Batch:
    """The serials of one publication, and what it published (or raised) for everyone waiting on it."""

    def __init__(self) -> None:
        self.serials: list[str] = []
        self.actors: list[str] = []
        self.done = False
        self.result: dict[str, PublishedCrl] = {}
        self.error: Exception | None = None


class Publisher:
    """The sub-CA (for CRLs) and the OCSP signer (for responses), both on the token."""

    def __init__(self, authority: Authority, ocsp: OcspService | None = None) -> None:
        self.authority = authority
        self.ocsp = ocsp or load_ocsp_service(authority.settings, authority.store)
        self._lock = threading.Condition()
        self._collecting = _Batch()  # revocations waiting for the publication after the running one
        self._running = False

    def regenerate_crl(self, actor: str = "crl-job") -> PublishedCrl:
        with token_errors():
            return generate_crl(self.authority, actor=actor)

    def presign_backlog(self, share: Share | None = None) -> int:
        """Pre-sign this process's share of the backlog (all of it by default) until it is drained."""
        done = self.ocsp.presign_backlog(share)
        if done:
            emit("ocsp.published", requester="scheduler", certificates=done,
                 share=f"{share.index + 1}/{share.count}" if share and share.count > 1 else None)
        return done

    def publish_revocation(self, serial: str, actor: str) -> PublishedCrl:
        """After a revoke or a hold release: the managed gateway's SAs of that certificate cut off, its
        OCSP answers re-signed, then a CRL: the shard CRL of a sharded certificate, else a delta CRL
        against the current full one when deltas are configured, else a full CRL.

        Revocations that arrive while a publication runs are coalesced: they wait for it, then one of
        them publishes all of them at once (one OCSP batch, one CRL per shard), so a burst costs two
        publications, not one per revocation. Returns the CRL that carries `serial`."""
        from vpnca.gateway.sessions import cut_off_quietly

        cut_off_quietly(self.authority.settings, self.authority.store, serial, actor=actor)
        with self._lock:
            batch = self._collecting
            batch.serials.append(serial)
            batch.actors.append(actor)
            while self._running and not batch.done:
                self._lock.wait()
            if not batch.done:  # nobody took this batch: this caller publishes it
                self._running = True
                self._collecting = _Batch()
        if not batch.done:
            try:
                with token_errors():
                    batch.result = self._publish(batch.serials, batch.actors[0])
            except Exception as exc:  # noqa: BLE001 - re-raised below, to every revocation of the batch
                batch.error = exc
            finally:
                with self._lock:
                    batch.done = True
                    self._running = False
                    self._lock.notify_all()
        if batch.error is not None:
            raise batch.error
        return batch.result[serial]

    def _publish(self, serials: list[str], actor: str) -> dict[str, PublishedCrl]:
        """One publication for `serials`: OCSP answers, then each shard's CRL and the delta (or full)
        CRL they need; the CRL that carries each serial."""
        self.ocsp.presign_serials(serials)
        emit("ocsp.published", requester=actor, serial=serials[0] if len(serials) == 1 else None,
             certificates=len(serials))
        shards = crl_shards_of(self.authority.store, serials)
        carried: dict[str, PublishedCrl] = {}
        for shard in sorted({shard for shard in shards.values() if shard is not None}):
            crl = generate_shard_crl(self.authority, shard, actor=actor)
            carried.update({serial: crl for serial in serials if shards.get(serial) == shard})
        unsharded = [serial for serial in serials if shards.get(serial) is None]
        if unsharded:
            crl = ((generate_delta_crl(self.authority, actor=actor) if self.authority.settings.crl.delta
                    else None) or self.regenerate_crl(actor))
            carried.update(dict.fromkeys(unsharded, crl))
        return carried
