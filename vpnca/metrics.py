"""Prometheus metrics. Worker processes share them through prometheus_client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by `vpnca serve` before the workers start); the gauges that describe
state (CRL age, certificates expiring) are read from the database at scrape time. prometheus_client is
imported on first use: operator commands that never count anything do not load it."""

from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


_REGISTERING = threading.Lock()
_REGISTERED: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
    """The metric objects, registered once per process (the first issuances race here from several
    threads; registering twice raises, so the first registration holds a lock)."""
    if not _REGISTERED:
        with _REGISTERING:
            if not _REGISTERED:
                _REGISTERED.update(_register())
    return _REGISTERED


def _register() -> dict[str, Any]:
    import prometheus_client as prom

    return {
        "issued": prom.Counter("vpnca_certificates_issued_total", "Certificates issued",
                               ["protocol", "profile", "kind"]),
        "refused": prom.Counter("vpnca_requests_refused_total", "Requests refused",
                                ["protocol", "profile", "reason"]),
        "revoked": prom.Counter("vpnca_certificates_revoked_total", "Revocations recorded", ["reason"]),
        "ocsp": prom.Counter("vpnca_ocsp_requests_total", "OCSP requests answered", ["answer"]),
        "ocsp_latency": prom.Histogram("vpnca_ocsp_response_seconds", "OCSP answer time in the responder",
                                       buckets=LATENCY_BUCKETS),
        "sign": prom.Histogram("vpnca_token_sign_seconds", "Time of one signature on the token",
                               ["key"], buckets=LATENCY_BUCKETS),
        "jobs": prom.Counter("vpnca_scheduler_runs_total", "Scheduled job runs", ["job", "result"]),
        "gw_tunnels": prom.Gauge("vpnca_gateway_tunnels", "Established IKE SAs at the managed gateway",
                                 ["gateway"], multiprocess_mode="livemax"),
        "gw_established": prom.Counter("vpnca_gateway_established_total", "IKE SAs established",
                                       ["gateway"]),
        "gw_down": prom.Counter("vpnca_gateway_down_total",
                                "IKE SAs gone: deleted, lost (DPD, rekey) or failed (never up)",
                                ["gateway", "reason"]),
        "gw_terminated": prom.Counter("vpnca_gateway_terminated_total",
                                      "IKE SAs cut off because their certificate was revoked", ["gateway"]),
    }


def issued(protocol: str, profile: str, kind: str) -> None:
    _metrics()["issued"].labels(protocol, profile, kind).inc()


def refused(protocol: str, reason: str, profile: str = "") -> None:
    _metrics()["refused"].labels(protocol, profile, reason).inc()


def revoked(reason: str) -> None:
    _metrics()["revoked"].labels(reason).inc()


OCSP_LATENCY_SAMPLE = 8  # under load one answer time in 8 is observed; every one when traffic is sparse
_ocsp_answers: dict[str, Any] = {}
_ocsp_latency_seen = itertools.count()
_ocsp_latency_last = 0.0


def ocsp_answered(answer: str, seconds: float) -> None:
    """Count every answer; observe its time (the responder's hot path: the label child is cached and,
    above a few answers a second, the latency histogram is sampled)."""
    global _ocsp_latency_last  # noqa: PLW0603 - one float on the responder's hot path, per process
    _ocsp_counter(answer).inc()
    now = time.monotonic()
    if next(_ocsp_latency_seen) % OCSP_LATENCY_SAMPLE == 0 or now - _ocsp_latency_last > 0.1:
        _ocsp_latency_last = now
        _metrics()["ocsp_latency"].observe(seconds)


def ocsp_answered_many(answer: str, count: int) -> None:
    """Count `count` answers at once (replies the responder remembered; their time is negligible)."""
    _ocsp_counter(answer).inc(count)


def _ocsp_counter(answer: str) -> Any:
    counter = _ocsp_answers.get(answer)
    if counter is None:
        counter = _ocsp_answers[answer] = _metrics()["ocsp"].labels(answer)
    return counter


def token_signed(key: str, seconds: float) -> None:
    _metrics()["sign"].labels(key).observe(seconds)


def job_ran(job: str, ok: bool) -> None:
    _metrics()["jobs"].labels(job, "ok" if ok else "failed").inc()


def gateway_tunnels(gateway: str, count: int) -> None:
    _metrics()["gw_tunnels"].labels(gateway).set(count)


def gateway_established(gateway: str) -> None:
    _metrics()["gw_established"].labels(gateway).inc()


def gateway_down(gateway: str, reason: str) -> None:
    _metrics()["gw_down"].labels(gateway, reason).inc()


def gateway_terminated(gateway: str, count: int) -> None:
    _metrics()["gw_terminated"].labels(gateway).inc(count)


def prepare_multiprocess(directory: Path) -> None:
    """Before the workers start: a fresh directory for the shared metric files. The metrics this
    process creates from now on (the supervisor's restart counter) are written there too."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values as prom_values

    # prometheus_client may have chosen its value class when it was imported, before the variable was set
    prom_values.ValueClass = prom_values.MultiProcessValue()


_WORKER_RESTARTS: list[Any] = []


def _worker_restarts() -> Any:
    """The supervisor's counter, created on first use (after prepare_multiprocess, so that its file
    is in the shared directory the workers' /metrics read), and only in the supervising process."""
    if not _WORKER_RESTARTS:
        import prometheus_client as prom

        _WORKER_RESTARTS.append(prom.Counter("vpnca_worker_restarts_total",
                                             "Worker processes replaced after an unexpected exit",
                                             ["server"]))
    return _WORKER_RESTARTS[0]


def worker_restarts_declared(server: str) -> None:
    """Show the restart count of `server` ("serve" or "ocsp") from the start, at 0."""
    _worker_restarts().labels(server)


def worker_restarted(server: str) -> None:
    _worker_restarts().labels(server).inc()


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges no longer count (its counters and histograms still do)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def render(store: Any, ca_name: str) -> bytes:
    """The exposition text: process metrics (merged across workers) plus state read now."""
    import prometheus_client as prom
    from prometheus_client import multiprocess
    from prometheus_client import values as prom_values

    if prom_values.ValueClass is not prom_values.MutexValue:  # this process writes the shared files
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prom.REGISTRY
    state = prom.CollectorRegistry()
    now = datetime.now(UTC)
    crl = store.latest_crl(ca_name)
    prom.Gauge("vpnca_crl_age_seconds", "Seconds since the current full CRL was signed", registry=state).set(
        (now - crl.this_update).total_seconds() if crl else float("nan"))
    expiring = prom.Gauge("vpnca_certificates_expiring", "Valid certificates expiring within the window",
                          ["within"], registry=state)
    for label, window in (("1d", timedelta(days=1)), ("7d", timedelta(days=7)), ("14d", timedelta(days=14))):
        expiring.labels(label).set(store.count_expiring(now, now + window))
    by_status = prom.Gauge("vpnca_certificates", "Certificates in the register by status", ["status"],
                           registry=state)
    for status, count in store.count_by_status().items():
        by_status.labels(status).set(count)
    return prom.generate_latest(registry) + prom.generate_latest(state)


def __getattr__(name: str) -> str:
    """CONTENT_TYPE: the exposition's media type, from prometheus_client when it is first asked for."""
    if name == "CONTENT_TYPE":
        import prometheus_client

        return str(prometheus_client.CONTENT_TYPE_LATEST)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
