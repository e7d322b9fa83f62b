"""What a client may cost the HTTP listeners (`vpnca serve`, both listeners, and `vpnca ocsp serve`).

A request head (request line and header fields) larger than MAX_HEAD_BYTES is answered 431 and the
connection closed; nothing more of it is buffered. The head must arrive within HEAD_TIMEOUT seconds
of the connection (first request) or of its first byte (later requests on a keep-alive connection);
a declared body within BODY_TIMEOUT seconds of the head. Otherwise 408 (when no answer is under way)
and the connection is closed. A connection idle between requests is closed after KEEP_ALIVE_TIMEOUT.
Each cut-off is an INFO event (`http.cut_off`: the client's doing, not ours) and counts in
`vpnca_requests_refused_total{protocol="http"}` under its reason.
"""

from __future__ import annotations

from vpnca import metrics
from vpnca.events import emit

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 30.0

HEAD_TOO_LARGE = "head_too_large"
HEAD_TIMED_OUT = "head_timeout"
BODY_TIMED_OUT = "body_timeout"

_REASONS = {431: b"Request Header Fields Too Large", 408: b"Request Timeout"}


def cut_off(reason: str, listener: str, client: object, received: int = 0) -> None:
    """Record one connection cut off for `reason` (log at INFO, count in /metrics)."""
    emit("http.cut_off", reason=reason, listener=listener, client=client, received=received)
    metrics.refused("http", reason)


def refusal(status: int, message: bytes) -> bytes:
    """The whole answer (head and body) that goes out just before the connection is closed."""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(message), message))
