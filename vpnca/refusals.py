"""A refusal logged and counted exactly once, whoever meets it first: the core when it decides, else
the protocol edge. The log line carries the detail and a correlation id; the client gets the id only."""

from __future__ import annotations

import logging

from vpnca import metrics
from vpnca.errors import Pending, SigningUnavailable, Unavailable, VpncaError, new_error_id, reason_of
from vpnca.events import emit
from vpnca.outage import OUTAGES

log = logging.getLogger("vpnca.refusals")

DETAIL_LIMIT = 300


def record_refusal(exc: BaseException, *, protocol: str, event: str = "issuance.refused", profile: str = "",
                   reason: str | None = None, **fields: object) -> str:
    """Log and count `exc` unless that was done already; its correlation id either way.

    A core error is one event (`event`) and one `vpnca_requests_refused_total` sample; an outage is said
    once per outage (OUTAGES) and counted `unavailable`; anything else is a bug, logged with its
    traceback and counted `error`.
    """
    if isinstance(exc, VpncaError) and exc.counted and exc.error_id:
        return exc.error_id
    error_id = new_error_id()
    reason = reason or reason_of(exc)
    if isinstance(exc, Pending):
        return error_id
    if isinstance(exc, Unavailable):
        OUTAGES.down("token" if isinstance(exc, SigningUnavailable) else "database", exc.__cause__ or exc)
        log.info("%s request %s: %s", protocol, error_id, exc)
    elif isinstance(exc, VpncaError):
        emit(event, logging.WARNING, protocol=protocol, profile=profile or None, reason=reason,
             detail=str(exc)[:DETAIL_LIMIT], error_id=error_id, **fields)
    else:
        log.error("%s request %s failed unexpectedly", protocol, error_id, exc_info=exc)
    metrics.refused(protocol, reason, profile)
    if isinstance(exc, VpncaError):
        exc.counted, exc.error_id = True, error_id
    return error_id


__all__ = ["record_refusal"]
