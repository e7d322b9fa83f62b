"""Are the scheduled jobs still running? `vpnca status` shows how old each job's last run is and
flags it STALE when it is older than twice the job's interval plus a margin (or, for a job backing
off after failures, an interval plus the margin past its retry time): whatever should run it (the
first worker of `vpnca serve`, or `vpnca scheduler`) has stopped, or is stuck."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from vpnca.scheduler import job_intervals

if TYPE_CHECKING:
    from sqlalchemy import Row

    from vpnca.config import Settings
    from vpnca.store.models import JobRun

STALE_MARGIN = timedelta(minutes=1)


def stale_after(run: JobRun | Row[Any], interval: timedelta) -> datetime:
    """When a job whose last recorded run is `run` is overdue."""
    due = run.next_attempt if not run.ok and run.next_attempt else run.last_run + interval
    return max(due, run.last_run + interval) + interval + STALE_MARGIN


def job_freshness(settings: Settings, run: JobRun | Row[Any], now: datetime) -> dict[str, Any]:
    """The age of the job's last run, its interval and whether it is stale (None: not a job of ours)."""
    interval = job_intervals(settings).get(run.job)
    age = (now - run.last_run).total_seconds()
    if interval is None:
        return {"age_seconds": round(age, 3), "interval_seconds": None, "stale": None}
    return {"age_seconds": round(age, 3), "interval_seconds": interval.total_seconds(),
            "stale": now > stale_after(run, interval)}


def job_state(job: dict[str, Any]) -> str:
    """One job's state in `vpnca status`: ok, FAILED (retrying), STALE (not run for too long)."""
    state = "ok" if job["ok"] else f"FAILED x{job['failures']}, retry {str(job['next_attempt'])[:19]}"
    if job.get("stale"):
        state = (f"STALE: last run {_duration(job['age_seconds'])} ago, every "
                 f"{_duration(job['interval_seconds'])}" + ("" if job["ok"] else f"; {state}"))
    return state


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
