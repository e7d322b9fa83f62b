"""Scheduled jobs (APScheduler): CRL regeneration, OCSP pre-signing and gateway renewal.

Every run is recorded (`vpnca status` shows the latest per job) and audited; a failed job is retried
with exponential backoff instead of at every tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from vpnca import metrics
from vpnca.revocation import Publisher

log = logging.getLogger("vpnca.scheduler")
MAX_BACKOFF = timedelta(minutes=30)


def build_scheduler(publisher: Publisher, *, gateway_every: timedelta | None = None) -> BackgroundScheduler:
    authority = publisher.authority
    settings, store = authority.settings, authority.store
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1})

    def recorded(name: str, interval: timedelta, job: Callable[[], Any]) -> None:
        def run() -> None:
            previous = store.job_run(name)
            now = datetime.now(UTC)
            if previous is not None and previous.next_attempt is not None and now < previous.next_attempt:
                return  # backing off after failures
            try:
                result = job()
            except Exception as exc:  # noqa: BLE001 - recorded, audited and retried with backoff
                failures = (previous.failures if previous and not previous.ok else 0) + 1
                delay = min(interval * (2 ** (failures - 1)), MAX_BACKOFF)
                log.exception("job %s failed (%d in a row); next attempt in %s", name, failures, delay)
                store.record_job(name, ok=False, message=f"{type(exc).__name__}: {exc}", next_attempt=now + delay)
                metrics.job_ran(name, False)
                return
            metrics.job_ran(name, True)
            # None: nothing was due; the check is recorded for `vpnca status` but not audited
            store.record_job(name, ok=True, message=str(result) if result is not None else "nothing due",
                             next_attempt=None, audit=result is not None)
        scheduler.add_job(run, "interval", seconds=interval.total_seconds(), id=name, next_run_time=datetime.now(UTC))

    recorded("crl", settings.crl.regenerate_every, lambda: f"CRL {publisher.regenerate_crl().number}")
    recorded("ocsp-presign", settings.ocsp.presign_every,
             lambda: (f"pre-signed {n}" if (n := publisher.presign_backlog()) else None))
    if settings.gateway.id:
        from vpnca.gateway.renewal import renew_gateway_if_due

        recorded("gateway-renewal", gateway_every or timedelta(seconds=settings.gateway.check_every_seconds),
                 lambda: renew_gateway_if_due(authority))
    return scheduler
