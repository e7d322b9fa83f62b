"""Scheduled jobs (APScheduler): CRL regeneration and OCSP pre-signing; every run is audited on failure
and its last result kept for `vpnca status`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from vpnca.revocation import Publisher

log = logging.getLogger("vpnca.scheduler")


def build_scheduler(publisher: Publisher) -> BackgroundScheduler:
    settings = publisher.authority.settings
    store = publisher.authority.store
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1})

    def audited(name: str, job: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                result = job()
                log.info("job %s done: %s", name, result)
            except Exception as exc:  # noqa: BLE001 - a failed run is recorded and retried next time
                log.exception("job %s failed", name)
                store.audit("scheduler", "job-failed", {"job": name, "error": f"{type(exc).__name__}: {exc}"})
        return run

    scheduler.add_job(audited("crl", lambda: publisher.regenerate_crl().number), "interval",
                      seconds=settings.crl.regenerate_every.total_seconds(), id="crl",
                      next_run_time=datetime.now(UTC))
    scheduler.add_job(audited("ocsp-presign", publisher.presign_backlog), "interval",
                      seconds=settings.ocsp.presign_every.total_seconds(), id="ocsp-presign",
                      next_run_time=datetime.now(UTC))
    return scheduler
