"""Scheduled jobs (APScheduler): CRL regeneration, OCSP pre-signing and gateway renewal.

Every run is recorded (`vpnca status` shows the latest per job, and flags a job whose last run is
too old: see vpnca.health) and audited; a failed job is retried with exponential backoff instead of
at every tick. The jobs live in memory: when the scheduler starts again (a new `vpnca serve`, or the
replacement of the worker that ran it), each job runs at once if it is due by its last recorded run
(never ran, or ran an interval ago or more), else when it falls due, so a restart neither skips a
CRL for a whole interval nor signs one more than needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from vpnca import metrics

if TYPE_CHECKING:  # imported by build_scheduler: `vpnca status` reads job_intervals without them
    from apscheduler.schedulers.background import BackgroundScheduler

    from ocsp.presign import Share
    from vpnca.config import Settings
    from vpnca.revocation import Publisher

log = logging.getLogger("vpnca.scheduler")
MAX_BACKOFF = timedelta(minutes=30)


def job_intervals(settings: Settings) -> dict[str, timedelta]:
    """How often each scheduled job runs (the gateway renewal check only with a bundled gateway)."""
    intervals = {"crl": settings.crl.regenerate_every, "ocsp-presign": settings.ocsp.presign_every}
    if settings.gateway.id or settings.gateways:
        intervals["gateway-renewal"] = timedelta(seconds=settings.gateway.check_every_seconds)
    return intervals


def first_run(previous: Any, interval: timedelta, now: datetime) -> datetime:
    """When a job should first run in a scheduler that starts now, from its last recorded run."""
    if previous is None:
        return now
    due: datetime = (previous.next_attempt if not previous.ok and previous.next_attempt
                     else previous.last_run + interval)
    return max(now, due)


def presign_message(presigned: int, share: Share | None) -> str | None:
    """The pre-signing job's record; None when nothing was due."""
    if not presigned:
        return None
    return f"pre-signed {presigned}" + (f" (share {share.index + 1} of {share.count})"
                                        if share is not None and share.count > 1 else "")


def build_scheduler(publisher: Publisher, *, gateway_every: timedelta | None = None,
                    share: Share | None = None, presign_only: bool = False) -> BackgroundScheduler:
    """Every job, or (`presign_only`: the other `vpnca serve` workers) OCSP pre-signing alone; `share`:
    the part of the pre-signing backlog this process signs (all of it by default)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    authority = publisher.authority
    settings, store = authority.settings, authority.store
    # a run that starts late (a loaded machine, a slow start) still runs: APScheduler's default would
    # drop a run more than a second late, and the job would wait a whole interval
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1,
                                                                "misfire_grace_time": None})

    def recorded(name: str, interval: timedelta, job: Callable[[], Any]) -> None:
        def run() -> None:
            previous = store.job_run(name)
            now = authority.clock.now()  # the backoff is decided by the core's clock
            if previous is not None and previous.next_attempt is not None and now < previous.next_attempt:
                return  # backing off after failures
            try:
                result = job()
            except Exception as exc:  # recorded (log.exception), audited and retried with backoff
                failures = (previous.failures if previous and not previous.ok else 0) + 1
                delay = min(interval * (2 ** (failures - 1)), MAX_BACKOFF)
                log.exception("job %s failed (%d in a row); next attempt in %s", name, failures, delay)
                store.record_job(name, ok=False, message=f"{type(exc).__name__}: {exc}",
                                 next_attempt=now + delay)
                metrics.job_ran(name, False)
                return
            metrics.job_ran(name, True)
            # None: nothing was due; the check is recorded for `vpnca status` but not audited
            store.record_job(name, ok=True, message=str(result) if result is not None else "nothing due",
                             next_attempt=None, audit=result is not None)
        scheduler.add_job(run, "interval", seconds=interval.total_seconds(), id=name,
                          next_run_time=first_run(store.job_run(name), interval, datetime.now(UTC)))

    intervals = job_intervals(settings)
    # a run signs until its share of the backlog is drained, however long that takes (a run that falls
    # due meanwhile is skipped: the running one will have signed what it would have)
    recorded("ocsp-presign", intervals["ocsp-presign"],
             lambda: presign_message(publisher.presign_backlog(share), share))
    if presign_only:
        return scheduler
    recorded("crl", intervals["crl"], lambda: f"CRL {publisher.regenerate_crl().number}")
    if "gateway-renewal" in intervals:
        from vpnca.gateway.renewal import renew_gateway_if_due

        recorded("gateway-renewal", gateway_every or intervals["gateway-renewal"],
                 lambda: renew_gateway_if_due(authority))
        from vpnca.gateway.sessions import ensure_watcher

        # the VICI event watcher (connection records, revocation cut-off sweep) runs in a thread of the
        # process that runs the scheduler; this job starts it, and again should its thread die
        scheduler.add_job(lambda: ensure_watcher(settings, store), "interval", seconds=10,
                          id="gateway-watcher", next_run_time=datetime.now(UTC))
    return scheduler
